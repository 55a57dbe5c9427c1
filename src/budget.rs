//! Fleet-wide safety budgets (`Settings spec.safety.fleet`): built-in
//! gates over the resources a label selector picks, counted in the state
//! database across every member that shares it (one machine alone is a
//! fleet of one). No policy can loosen them.
//!
//! - `maxConcurrent`: an automatic action on a selected resource takes a
//!   slot of the budget before its intent is journaled, in one
//!   transaction serialized per budget, and gives it back when its
//!   outcome is known (a runbook step: when its verification ends). A
//!   full budget makes the action wait; nothing is spent.
//! - `minHealthy`: every member reports, each pass, which of its selected
//!   resources are healthy. While fewer than the minimum are, across the
//!   live members, no automatic action runs on the selector and one
//!   incident, on the first unhealthy resource of the fleet, names the
//!   budget. A member acts on such a selector only once every live member
//!   has reported after the problem began: failures that come together
//!   are judged together.
//! - `maxErrors`: failed and not verified outcomes on selected resources
//!   within the window, fleet-wide, stop automatic actions the same way.
//!
//! See ARCHITECTURE.md.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::health::Status;
use crate::model::{DesiredState, FleetBudget, Resource, Share};
use crate::state::{NewSlot, StateError, Store};
use crate::vocab::ResourceKey;

/// Where one budget stands for this member, at one pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub budget: String,
    /// Why no automatic action runs on the selector now.
    pub stop: Option<String>,
    /// The stop only waits for the other members' health reports: no
    /// incident for it.
    pub waiting: bool,
    /// The stop comes from `minHealthy`, which holds no creation (a
    /// resource that does not exist yet is not counted either).
    pub by_health: bool,
    /// The first unhealthy resource of the fleet (by node, then key): the
    /// one whose incident names the budget when it stops.
    pub first: Option<(String, ResourceKey)>,
}

/// The budgets that select `r`.
pub fn selecting<'a>(
    desired: &'a DesiredState,
    r: &'a Resource,
) -> impl Iterator<Item = &'a FleetBudget> {
    desired
        .settings
        .safety
        .fleet
        .iter()
        .filter(|b| b.selector.selects(r))
}

/// The live members' nodes, in a fleet.
fn live(store: &dyn Store, desired: &DesiredState) -> Result<Option<Vec<String>>, StateError> {
    store
        .fleet()
        .map(|f| f.live_nodes(desired.settings.lease()))
        .transpose()
}

/// Whether a resource counts as healthy for `minHealthy`: every signal
/// read healthy (unknown is not healthy: the observer may be what broke).
pub fn healthy(a: &crate::health::Assessment) -> bool {
    a.signals
        .iter()
        .all(|t| t.reading.status == Status::Healthy)
}

/// How long a member waits for the others' health reports before it
/// judges a `minHealthy` budget with the reports there are (a member that
/// stopped reporting must not hold the fleet for ever).
const WAIT_CAP: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

/// Reports this member's selected resources' health for every budget,
/// and says, per budget with `minHealthy`, since when the first of them
/// is not healthy, if one is not. A resource that does not exist yet is
/// not counted: creating it is no healing.
pub fn report(
    store: &dyn Store,
    desired: &DesiredState,
    watched: &[crate::plan::Watched<'_>],
    exists: &dyn Fn(&ResourceKey) -> bool,
) -> Result<HashMap<String, DateTime<Utc>>, StateError> {
    let mut onsets = HashMap::new();
    for b in &desired.settings.safety.fleet {
        let mut onset: Option<DateTime<Utc>> = None;
        let mut rows = Vec::new();
        let selected = watched
            .iter()
            .filter(|w| b.selector.selects(w.resource) && exists(&w.resource.key));
        for w in selected {
            let ok = healthy(&w.assessment);
            let health = match (ok, w.assessment.problem.is_some()) {
                (true, _) => crate::state::Health::Healthy,
                (false, true) => crate::state::Health::Problem,
                (false, false) => crate::state::Health::Unwell,
            };
            rows.push((w.resource.key.clone(), health));
            if !ok && b.min_healthy.is_some() {
                let since = w
                    .assessment
                    .signals
                    .iter()
                    .filter(|t| t.reading.status != Status::Healthy)
                    .map(|t| t.since)
                    .min();
                onset = onset.into_iter().chain(since).min();
            }
        }
        store.fleet_rows().report_health(&b.name, &rows)?;
        if let Some(t) = onset {
            onsets.insert(b.name.clone(), t);
        }
    }
    Ok(onsets)
}

/// Where every budget stands: stopped by `minHealthy` or `maxErrors`, or
/// (when `onsets` says since when this member's resources a budget
/// selects are unhealthy) waiting for the other members' reports, for at
/// most two minutes.
pub fn standing(
    store: &dyn Store,
    desired: &DesiredState,
    onsets: &HashMap<String, DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Vec<Standing>, StateError> {
    let budgets = &desired.settings.safety.fleet;
    if budgets.is_empty() {
        return Ok(Vec::new());
    }
    let live = live(store, desired)?;
    let is_live = |node: &str| live.as_ref().is_none_or(|l| l.iter().any(|n| n == node));
    let index = desired.index();
    let widest = budgets.iter().map(|b| b.window.0).max().unwrap_or_default();
    let errors = if budgets.iter().any(|b| b.max_errors.is_some()) {
        store
            .fleet_rows()
            .fleet_errors(now - chrono::Duration::from_std(widest).unwrap_or_default())?
    } else {
        Vec::new()
    };
    let mut out = Vec::with_capacity(budgets.len());
    for b in budgets {
        let reports = store.fleet_rows().fleet_health(&b.name)?;
        let reports: Vec<_> = reports.into_iter().filter(|r| is_live(&r.node)).collect();
        let mut first: Option<(String, ResourceKey)> = None;
        let (mut total, mut good) = (0usize, 0usize);
        let mut looked: HashMap<&str, DateTime<Utc>> = HashMap::new();
        for r in &reports {
            match &r.key {
                None => {
                    looked.insert(&r.node, r.at);
                }
                Some(k) => {
                    total += 1;
                    if r.healthy {
                        good += 1;
                    } else if r.problem
                        && first.as_ref().is_none_or(|f| (&r.node, k) < (&f.0, &f.1))
                    {
                        first = Some((r.node.clone(), k.clone()));
                    }
                }
            }
        }
        let mut stop = None;
        let mut waiting = false;
        let mut by_health = false;
        if let Some(min) = b.min_healthy {
            // Never more than there are: nothing selected exists yet, nothing
            // is held.
            let needed = min.of(total).min(total);
            let onset = onsets.get(&b.name).filter(|t| now - **t < WAIT_CAP);
            let stale: Vec<&str> = match onset {
                Some(onset) => {
                    let mut nodes: Vec<&str> = live
                        .iter()
                        .flatten()
                        .map(String::as_str)
                        .filter(|n| looked.get(n).is_none_or(|at| at < onset))
                        .collect();
                    nodes.sort_unstable();
                    nodes
                }
                None => Vec::new(),
            };
            by_health = true;
            if good < needed {
                stop = Some(format!(
                    "fleet budget `{}`: {good} of the {total} resources it selects are healthy, fewer than minHealthy {min}; the observer or a shared dependency is more likely broken than every one of them (Settings spec.safety.fleet)",
                    b.name
                ));
            } else if !stale.is_empty() {
                waiting = true;
                stop = Some(format!(
                    "fleet budget `{}`: waiting for the health reports of {} taken after the problem began, so that failures that come together are judged together (minHealthy {min}, Settings spec.safety.fleet)",
                    b.name,
                    stale.join(", ")
                ));
            } else {
                by_health = false;
            }
        }
        if let (None, Some(max)) = (&stop, b.max_errors) {
            let since = now - chrono::Duration::from_std(b.window.0).unwrap_or_default();
            let failed: Vec<_> = errors
                .iter()
                .filter(|e| e.at >= since)
                .filter(|e| index.get(&e.key).is_some_and(|r| b.selector.selects(r)))
                .collect();
            if failed.len() >= max {
                stop = Some(format!(
                    "fleet budget `{}`: {} actions on the resources it selects failed or were not verified since {}, maxErrors is {max}; tend stops acting on them until the window ({}) has passed (Settings spec.safety.fleet)",
                    b.name,
                    failed.len(),
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    humantime::format_duration(b.window.0)
                ));
            }
        }
        out.push(Standing {
            budget: b.name.clone(),
            stop,
            waiting,
            by_health,
            first,
        });
    }
    Ok(out)
}

/// What the standing of the budgets means for a resource: why no
/// automatic action runs on it, if one budget that selects it stops.
pub fn stops<'a>(
    standing: &'a [Standing],
    desired: &DesiredState,
    r: &Resource,
) -> Option<&'a Standing> {
    selecting(desired, r).find_map(|b| {
        standing
            .iter()
            .find(|s| s.budget == b.name && s.stop.is_some())
    })
}

/// Takes a slot of every budget with `maxConcurrent` that selects `r`, for
/// an action expected to end within `hold`; [`release`] gives them back.
/// `Err` says why the action waits (a budget is full; the slots taken
/// before it are given back).
pub fn take(
    store: &dyn Store,
    desired: &DesiredState,
    r: &Resource,
    run_id: i64,
    hold: Duration,
) -> Result<Result<(), String>, StateError> {
    let limited: Vec<&FleetBudget> = selecting(desired, r)
        .filter(|b| b.max_concurrent.is_some())
        .collect();
    if limited.is_empty() {
        return Ok(Ok(()));
    }
    let live = live(store, desired)?;
    let members = live.as_ref().map_or(1, |l| l.len().max(1));
    let until = Utc::now() + chrono::Duration::from_std(hold).unwrap_or_default();
    let take_one = |b: &FleetBudget, share: Share| -> Result<Result<(), String>, StateError> {
        // A share of the selected resources across the fleet: each
        // `host.*` one once per live member.
        let selected: usize = desired
            .resources
            .iter()
            .filter(|x| b.selector.selects(x))
            .map(|x| {
                if crate::state::shared(&x.key) {
                    1
                } else {
                    members
                }
            })
            .sum();
        let max = share.of(selected).max(1);
        let full = store.fleet_rows().take_slot(&NewSlot {
            budget: &b.name,
            key: &r.key,
            max,
            run_id,
            until,
            live: live.as_deref(),
        })?;
        if full.is_empty() {
            return Ok(Ok(()));
        }
        let mut held: Vec<String> = full
            .iter()
            .take(3)
            .map(|s| {
                let node = if s.node.is_empty() {
                    String::new()
                } else {
                    format!("{} ", s.node)
                };
                format!("{node}{} since {}", s.key, s.at.format("%H:%M:%S"))
            })
            .collect();
        if full.len() > 3 {
            held.push(format!("and {} more", full.len() - 3));
        }
        Ok(Err(format!(
            "fleet budget `{}` is full: {} of at most {max} actions in flight ({}); the action waits (maxConcurrent {share}, Settings spec.safety.fleet)",
            b.name,
            full.len(),
            held.join(", ")
        )))
    };
    let mut taken = Ok(Ok(()));
    for b in limited {
        if let Some(share) = b.max_concurrent {
            taken = take_one(b, share);
            if !matches!(taken, Ok(Ok(()))) {
                break;
            }
        }
    }
    if !matches!(taken, Ok(Ok(()))) {
        // Nothing half taken: the slots of the budgets before the full
        // (or failing) one are given back.
        let _ = store.fleet_rows().release_slots(&r.key);
    }
    taken
}

/// Gives back what [`take`] took for an action on `r`.
pub fn release(store: &dyn Store, desired: &DesiredState, r: &Resource) -> Result<(), StateError> {
    if selecting(desired, r).any(|b| b.max_concurrent.is_some()) {
        store.fleet_rows().release_slots(&r.key)?;
    }
    Ok(())
}

/// Holds the automatic actions on resources a stopped budget selects.
pub fn gate(
    actions: &mut [crate::vocab::Action],
    standing: &[Standing],
    desired: &DesiredState,
    index: &HashMap<&ResourceKey, &Resource>,
) {
    if standing.iter().all(|s| s.stop.is_none()) {
        return;
    }
    for action in actions.iter_mut() {
        if action.decision != crate::vocab::Decision::Auto {
            continue;
        }
        let Some(r) = index.get(&action.target) else {
            continue;
        };
        // A creation is held by every stopped budget but `minHealthy`.
        let create = action.action_type == crate::vocab::ActionType::Create;
        let stopped = selecting(desired, r).find_map(|b| {
            standing
                .iter()
                .find(|s| s.budget == b.name && s.stop.is_some() && !(create && s.by_health))
        });
        if let Some(s) = stopped {
            let why = s.stop.clone().unwrap_or_default();
            action.decision = crate::vocab::Decision::Deferred;
            action.reasons.push(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::Share;

    #[test]
    fn a_share_is_rounded_up_and_a_count_is_itself() {
        assert_eq!(Share::Percent(20.0).of(6), 2);
        assert_eq!(Share::Percent(50.0).of(6), 3);
        assert_eq!(Share::Percent(50.0).of(5), 3);
        assert_eq!(Share::Percent(100.0).of(3), 3);
        assert_eq!(Share::Percent(0.0).of(3), 0);
        assert_eq!(Share::Count(1).of(300), 1);
    }
}
