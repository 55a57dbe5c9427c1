//! Built-in safety gates that no policy can switch off.
//!
//! Each gate only ever makes a decision stricter: an `auto` action may become
//! `deferred` (held for a later pass) or `review` (contested), never the
//! other way round. Gates are pure: the clock and the journal's facts are
//! passed in, so they are tested with any time they like.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, NaiveTime, TimeZone, Utc};

use crate::model::{MaintenanceWindow, ResourceKey, Settings};
use crate::plan::Plan;
use crate::vocab::{Action, ActionType, Decision, JournalOutcome};

/// One field tend corrected, from the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Correction {
    pub key: ResourceKey,
    pub path: String,
    pub at: DateTime<Utc>,
}

/// One recorded outcome of an action, from the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct PastOutcome {
    pub key: ResourceKey,
    pub action: crate::vocab::JournalAction,
    pub outcome: JournalOutcome,
    pub at: DateTime<Utc>,
}

/// What the journal says about recent passes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub corrections: Vec<Correction>,
    /// Oldest first.
    pub outcomes: Vec<PastOutcome>,
    /// Approvals already used, by resource, fingerprint and expiry: each
    /// one authorises one action only.
    pub used_approvals: std::collections::HashSet<(ResourceKey, String, DateTime<Utc>)>,
    /// The emergency pauses in force.
    pub pauses: Vec<crate::state::Pause>,
    /// Where the fleet budgets stand (`Settings spec.safety.fleet`).
    pub fleet: Vec<crate::budget::Standing>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GateError {
    #[error(
        "prune guard: this pass would delete {deletes} of {managed} managed resources ({percent:.0}%), more than the {limit:.0}% allowed by Settings spec.prune.maxDeleteShare; nothing was changed"
    )]
    PruneGuard {
        deletes: usize,
        managed: usize,
        percent: f64,
        limit: f64,
    },
}

/// Stops the whole pass when prune would delete too large a share of what
/// tend manages (a wrong path or an emptied directory in Git looks exactly
/// like "delete everything").
pub fn prune_guard(plan: &Plan, settings: &Settings) -> Result<(), GateError> {
    let deletes = plan.count(ActionType::Delete);
    if deletes == 0 {
        return Ok(());
    }
    let managed = plan.resources + deletes;
    let share = deletes as f64 / managed as f64;
    if share > settings.prune.max_delete_share {
        return Err(GateError::PruneGuard {
            deletes,
            managed,
            percent: share * 100.0,
            limit: settings.prune.max_delete_share * 100.0,
        });
    }
    Ok(())
}

fn hold(action: &mut Action, decision: Decision, reason: String) {
    action.decision = decision;
    action.reasons.push(reason);
}

fn ago(now: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Applies fight detection, the per-resource cooldown, the circuit breaker
/// and the action budget, in that order, to the actions that would run.
pub fn apply(plan: &mut Plan, settings: &Settings, facts: &Facts, now: DateTime<Utc>) {
    apply_to(&mut plan.actions, 0, settings, facts, now);
}

/// [`apply`] for actions decided after the plan (a runbook's next step),
/// when `spent` actions of the pass's budget are already allowed. Returns
/// how many of `actions` are still `auto`.
pub fn apply_to(
    actions: &mut [Action],
    spent: usize,
    settings: &Settings,
    facts: &Facts,
    now: DateTime<Utc>,
) -> usize {
    let safety = &settings.safety;
    fight_detection(actions, &safety.fight_detection, facts, now);
    cooldown(actions, safety.cooldown.0, facts, now);
    circuit_breaker(actions, &safety.circuit_breaker, facts, now);
    budget(actions, safety.max_actions_per_run, spent)
}

/// The same field corrected again and again: contested, for review.
fn fight_detection(
    actions: &mut [Action],
    fight: &crate::model::FightDetection,
    facts: &Facts,
    now: DateTime<Utc>,
) {
    let fight_since = ago(now, fight.window.0);
    let mut counts: HashMap<(&ResourceKey, &str), Vec<DateTime<Utc>>> = HashMap::new();
    for c in facts.corrections.iter().filter(|c| c.at >= fight_since) {
        counts
            .entry((&c.key, c.path.as_str()))
            .or_default()
            .push(c.at);
    }
    for action in actions.iter_mut() {
        if !matches!(action.decision, Decision::Auto) {
            continue;
        }
        // A change to a newly declared spec, and a rollback of one that
        // regressed, are verified and bounded by Settings spec.changes
        // (holds, maxConsecutiveRollbacks): tend rolling out its own
        // declaration is no fight.
        if action.change.is_some() {
            continue;
        }
        let mut contested = Vec::new();
        for change in &action.changes {
            if let Some(times) = counts.get(&(&action.target, change.path.as_str())) {
                if times.len() >= fight.corrections {
                    let list: Vec<String> = times.iter().map(|t| fmt_time(*t)).collect();
                    contested.push(format!(
                        "contested: {} was corrected {} times since {} ({}); something keeps changing it back, so tend stops correcting it",
                        change.path,
                        times.len(),
                        fmt_time(fight_since),
                        list.join(", ")
                    ));
                }
            }
        }
        if !contested.is_empty() {
            action.contested = true;
            action.decision = Decision::Review;
            action.reasons.extend(contested);
        }
    }
}

/// One action per resource per cooldown.
fn cooldown(
    actions: &mut [Action],
    cooldown: std::time::Duration,
    facts: &Facts,
    now: DateTime<Utc>,
) {
    if !cooldown.is_zero() {
        let since = ago(now, cooldown);
        let mut last: HashMap<&ResourceKey, DateTime<Utc>> = HashMap::new();
        for o in facts.outcomes.iter().filter(|o| o.at >= since) {
            last.insert(&o.key, o.at);
        }
        for action in actions.iter_mut() {
            if action.decision != Decision::Auto {
                continue;
            }
            if let Some(at) = last.get(&action.target) {
                let until = *at + chrono::Duration::from_std(cooldown).unwrap_or_default();
                hold(
                    action,
                    Decision::Deferred,
                    format!(
                        "cooldown: last action at {}, next one allowed after {}",
                        fmt_time(*at),
                        fmt_time(until)
                    ),
                );
            }
        }
    }
}

/// Across passes: the latest outcomes all failed, so nothing runs until
/// the window passes without new failures.
fn circuit_breaker(
    actions: &mut [Action],
    breaker: &crate::model::CircuitBreaker,
    facts: &Facts,
    now: DateTime<Utc>,
) {
    let since = ago(now, breaker.window.0);
    let recent: Vec<&PastOutcome> = facts.outcomes.iter().filter(|o| o.at >= since).collect();
    let streak = recent
        .iter()
        .rev()
        .take_while(|o| o.outcome == JournalOutcome::Failed)
        .count();
    if streak >= breaker.failures {
        for action in actions.iter_mut().filter(|a| a.decision == Decision::Auto) {
            hold(
                action,
                Decision::Deferred,
                format!(
                    "circuit breaker open: the last {streak} actions failed; tend acts again once the window ({}) has passed without new failures",
                    humantime::format_duration(breaker.window.0)
                ),
            );
        }
    }
}

/// At most `max` actions per pass, `spent` of them already allowed.
/// Returns how many of `actions` stay `auto`.
fn budget(actions: &mut [Action], max: usize, spent: usize) -> usize {
    let mut budget = max.saturating_sub(spent);
    let mut allowed = 0;
    for action in actions.iter_mut() {
        if action.decision != Decision::Auto {
            continue;
        }
        if budget == 0 {
            hold(
                action,
                Decision::Deferred,
                format!(
                    "deferred: at most {max} actions per pass (Settings spec.safety.maxActionsPerRun)"
                ),
            );
        } else {
            budget -= 1;
            allowed += 1;
        }
    }
    allowed
}

/// Whether a pause's selector matches a resource: empty matches
/// everything; else `KIND/NAME`, a `KIND`, or a label `key=value`.
pub fn pause_matches(selector: &str, key: &ResourceKey, labels: &[(String, String)]) -> bool {
    if selector.is_empty() {
        return true;
    }
    if let Some((k, v)) = selector.split_once('=') {
        return labels.iter().any(|(lk, lv)| lk == k && lv == v);
    }
    match selector.split_once('/') {
        Some((kind, name)) => key.kind.as_str() == kind && key.name == name,
        None => key.kind.as_str() == selector,
    }
}

/// Whether a selector is one [`pause_matches`] understands, else why not.
pub fn check_pause_selector(selector: &str) -> Result<(), String> {
    if selector.is_empty()
        || selector
            .split_once('=')
            .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
    {
        return Ok(());
    }
    let kind = selector.split_once('/').map_or(selector, |(k, _)| k);
    if crate::model::Kind::parse(kind).is_none() {
        return Err(format!(
            "invalid selector `{selector}`: expected KIND/NAME (host.Process/web), a KIND (host.Process), a label key=value (tier=web), or nothing for everything"
        ));
    }
    if selector.ends_with('/') {
        return Err(format!(
            "invalid selector `{selector}`: the name is missing"
        ));
    }
    Ok(())
}

/// The pause in words.
pub fn pause_in_words(p: &crate::state::Pause) -> String {
    format!(
        "paused {} {} by {}: {}",
        if p.selector.is_empty() {
            "everything".to_string()
        } else {
            format!("`{}`", p.selector)
        },
        p.until.map_or_else(
            || "until resumed".to_string(),
            |t| format!("until {}", fmt_time(t))
        ),
        p.who,
        p.reason
    )
}

/// Emergency pauses: an action on what a pause matches is deferred,
/// whatever allowed it (healing steps and rollbacks included).
pub fn paused(
    actions: &mut [Action],
    pauses: &[crate::state::Pause],
    index: &HashMap<&ResourceKey, &crate::model::Resource>,
) {
    if pauses.is_empty() {
        return;
    }
    for action in actions.iter_mut() {
        if action.decision != Decision::Auto {
            continue;
        }
        let labels = index
            .get(&action.target)
            .map_or(&[][..], |r| r.labels.as_slice());
        if let Some(p) = pauses
            .iter()
            .find(|p| pause_matches(&p.selector, &action.target, labels))
        {
            hold(action, Decision::Deferred, pause_in_words(p));
        }
    }
}

/// Freeze windows: while one is open, an action on a resource it selects
/// is deferred, maintenance window or not, unless a break-glass approval
/// names exactly that change (used once, like any approval).
pub fn frozen(
    actions: &mut [Action],
    windows: &[crate::model::FreezeWindow],
    index: &HashMap<&ResourceKey, &crate::model::Resource>,
    approvals: &[crate::model::Approval],
    used: &mut super::approve::Used,
    now: DateTime<Utc>,
) {
    let open: Vec<&crate::model::FreezeWindow> = windows
        .iter()
        .filter(|w| window_open(&w.schedule(), now))
        .collect();
    if open.is_empty() {
        return;
    }
    for action in actions.iter_mut() {
        if !matches!(action.decision, Decision::Auto | Decision::Review) {
            continue;
        }
        let Some(w) = open.iter().find(|w| {
            index
                .get(&action.target)
                .is_none_or(|r| w.selector.selects(r))
        }) else {
            continue;
        };
        // Approved already (a review) by a break-glass approval: it runs.
        let approved = action.approval.as_ref().is_some_and(|r| {
            approvals.iter().any(|ap| {
                ap.break_glass && ap.fingerprint == r.fingerprint && ap.target == action.target
            })
        });
        if approved {
            continue;
        }
        let glass = approvals.iter().find(|ap| {
            ap.break_glass
                && ap.target == action.target
                && ap.fingerprint == action.fingerprint
                && ap.expires > now
                && !used.contains(&super::approve::used_key(ap))
        });
        match glass {
            Some(ap) => {
                used.insert(super::approve::used_key(ap));
                action.decision = Decision::Auto;
                action.reasons.push(format!(
                    "freeze window `{}` is open; break-glass approval {} lets this change run once",
                    w.name, ap.origin.file
                ));
                action.approval = Some(crate::vocab::ApprovalRef {
                    file: ap.origin.file.to_string(),
                    fingerprint: ap.fingerprint.clone(),
                    expires: super::approve::expiry(ap),
                });
            }
            None => hold(
                action,
                Decision::Deferred,
                format!(
                    "freeze window `{}` is open: no automatic action; an Approval of change {} with `breakGlass: true` lets it run once",
                    w.name, action.fingerprint
                ),
            ),
        }
    }
}

/// The window open at `now`, if any.
pub fn open_window(
    windows: &[MaintenanceWindow],
    now: DateTime<Utc>,
) -> Option<&MaintenanceWindow> {
    windows.iter().find(|w| window_open(w, now))
}

fn window_open(w: &MaintenanceWindow, now: DateTime<Utc>) -> bool {
    let tz: chrono_tz::Tz = w
        .time_zone
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    let local = tz.from_utc_datetime(&now.naive_utc());
    let parse = |s: &str| -> Option<NaiveTime> {
        if s == "24:00" {
            return NaiveTime::from_hms_opt(23, 59, 59);
        }
        NaiveTime::parse_from_str(s, "%H:%M").ok()
    };
    let (Some(start), Some(end)) = (parse(&w.start), parse(&w.end)) else {
        return false;
    };
    let day = |d: chrono::Weekday| -> &'static str {
        match d {
            chrono::Weekday::Mon => "mon",
            chrono::Weekday::Tue => "tue",
            chrono::Weekday::Wed => "wed",
            chrono::Weekday::Thu => "thu",
            chrono::Weekday::Fri => "fri",
            chrono::Weekday::Sat => "sat",
            chrono::Weekday::Sun => "sun",
        }
    };
    let t = local.time();
    let today = day(local.weekday());
    let yesterday = day(local.weekday().pred());
    let listed = |d: &str| w.days.iter().any(|x| x == d);
    if start <= end {
        listed(today) && t >= start && (t < end || (w.end == "24:00" && t <= end))
    } else {
        // Crosses midnight: started today, or started yesterday.
        (listed(today) && t >= start) || (listed(yesterday) && t < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, Mode, Span};
    use crate::plan::SourceInfo;
    use crate::vocab::{FieldChange, Risk};
    use serde_json::json;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn action(name: &str, path: &str) -> Action {
        Action {
            fingerprint: name.into(),
            action_type: ActionType::Update,
            target: ResourceKey::new(Kind::HostFile, name),
            changes: vec![FieldChange {
                path: path.into(),
                from: json!("a"),
                to: json!("b"),
            }],
            risk: Risk::Low,
            reversible: true,
            decision: Decision::Auto,
            reasons: vec![],
            note: None,
            contested: false,
            declared_at: None,
            incident: None,
            approval: None,
            rollback: None,
            change: None,
        }
    }

    fn plan(actions: Vec<Action>) -> Plan {
        Plan {
            source: SourceInfo {
                origin: "x".into(),
                commit: None,
            },
            mode: Mode::Auto,
            resources: 10,
            in_sync: 0,
            actions,
            unmanaged: vec![],
            health: vec![],
            remedies: vec![],
            held: Vec::new(),
            paused: Vec::new(),
        }
    }

    #[test]
    fn budget_defers_the_rest() {
        let mut settings = Settings::default();
        settings.safety.max_actions_per_run = 2;
        let mut p = plan(
            (0..4)
                .map(|i| action(&format!("r{i}"), "/spec/content"))
                .collect(),
        );
        apply(
            &mut p,
            &settings,
            &Facts::default(),
            t("2026-11-21T10:00:00Z"),
        );
        let d: Vec<Decision> = p.actions.iter().map(|a| a.decision).collect();
        assert_eq!(
            d,
            vec![
                Decision::Auto,
                Decision::Auto,
                Decision::Deferred,
                Decision::Deferred
            ]
        );
    }

    #[test]
    fn cooldown_holds_until_it_passes() {
        let mut settings = Settings::default();
        settings.safety.cooldown = Span(std::time::Duration::from_secs(300));
        let facts = Facts {
            corrections: vec![],
            outcomes: vec![PastOutcome {
                key: ResourceKey::new(Kind::HostFile, "a"),
                action: crate::vocab::JournalAction::Act(ActionType::Update),
                outcome: JournalOutcome::Synced,
                at: t("2026-11-21T10:00:00Z"),
            }],
            ..Default::default()
        };
        let mut p = plan(vec![
            action("a", "/spec/content"),
            action("b", "/spec/content"),
        ]);
        apply(&mut p, &settings, &facts, t("2026-11-21T10:04:59Z"));
        assert_eq!(p.actions[0].decision, Decision::Deferred);
        assert!(p.actions[0].reasons[0].contains("next one allowed after 2026-11-21T10:05:00Z"));
        assert_eq!(p.actions[1].decision, Decision::Auto);
        let mut p = plan(vec![action("a", "/spec/content")]);
        apply(&mut p, &settings, &facts, t("2026-11-21T10:05:01Z"));
        assert_eq!(p.actions[0].decision, Decision::Auto);
    }

    #[test]
    fn fights_are_detected_per_field_within_the_window() {
        let settings = Settings::default();
        let key = ResourceKey::new(Kind::HostFile, "a");
        let facts = Facts {
            corrections: ["09:10", "09:30", "09:50"]
                .iter()
                .map(|hm| Correction {
                    key: key.clone(),
                    path: "/spec/content".into(),
                    at: t(&format!("2026-11-21T{hm}:00Z")),
                })
                .collect(),
            outcomes: vec![],
            ..Default::default()
        };
        let mut p = plan(vec![
            action("a", "/spec/content"),
            action("a", "/spec/mode"),
        ]);
        apply(&mut p, &settings, &facts, t("2026-11-21T10:00:00Z"));
        assert_eq!(p.actions[0].decision, Decision::Review);
        assert!(p.actions[0].contested);
        assert!(p.actions[0].reasons[0].contains("corrected 3 times"));
        assert_eq!(
            p.actions[1].decision,
            Decision::Auto,
            "another field is not contested"
        );
        // An hour later the first correction has left the window.
        let mut p = plan(vec![action("a", "/spec/content")]);
        apply(&mut p, &settings, &facts, t("2026-11-21T10:11:00Z"));
        assert_eq!(p.actions[0].decision, Decision::Auto);
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures() {
        let settings = Settings::default();
        let fail = |m: u32, outcome: &str| PastOutcome {
            key: ResourceKey::new(Kind::HostFile, "x"),
            action: crate::vocab::JournalAction::Act(ActionType::Update),
            outcome: JournalOutcome::parse(outcome).unwrap(),
            at: t(&format!("2026-11-21T10:0{m}:00Z")),
        };
        let facts = Facts {
            corrections: vec![],
            outcomes: vec![
                fail(1, "synced"),
                fail(2, "failed"),
                fail(3, "failed"),
                fail(4, "failed"),
            ],
            ..Default::default()
        };
        let mut p = plan(vec![action("a", "/spec/content")]);
        apply(&mut p, &settings, &facts, t("2026-11-21T10:05:00Z"));
        assert_eq!(p.actions[0].decision, Decision::Deferred);
        assert!(p.actions[0].reasons[0].starts_with("circuit breaker open"));
        let mut p = plan(vec![action("a", "/spec/content")]);
        apply(&mut p, &settings, &facts, t("2026-11-21T10:13:30Z"));
        assert_eq!(
            p.actions[0].decision,
            Decision::Auto,
            "closed once the window passed"
        );
    }

    #[test]
    fn prune_guard_stops_a_mass_deletion() {
        let settings = Settings::default();
        let mut p = plan(vec![]);
        p.resources = 2;
        for i in 0..3 {
            let mut a = action(&format!("d{i}"), "/");
            a.action_type = ActionType::Delete;
            p.actions.push(a);
        }
        assert!(matches!(
            prune_guard(&p, &settings),
            Err(GateError::PruneGuard {
                deletes: 3,
                managed: 5,
                ..
            })
        ));
        p.resources = 20;
        assert!(prune_guard(&p, &settings).is_ok());
    }

    #[test]
    fn maintenance_windows_follow_their_time_zone_and_cross_midnight() {
        let w = MaintenanceWindow {
            name: "nightly".into(),
            days: vec!["sat".into()],
            start: "23:00".into(),
            end: "02:00".into(),
            time_zone: Some("Europe/Berlin".into()),
        };
        let ws = [w];
        // Saturday 23:30 in Berlin (UTC+1 in November) is 22:30 UTC.
        assert!(open_window(&ws, t("2026-11-21T22:30:00Z")).is_some());
        // Sunday 01:30 Berlin: still the Saturday window.
        assert!(open_window(&ws, t("2026-11-22T00:30:00Z")).is_some());
        // Saturday 22:30 Berlin: not yet.
        assert!(open_window(&ws, t("2026-11-21T21:30:00Z")).is_none());
        // Sunday 23:30 Berlin: Sunday is not listed.
        assert!(open_window(&ws, t("2026-11-22T22:30:00Z")).is_none());
    }
}
