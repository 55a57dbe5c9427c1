//! Merged approvals: a human's yes to one pending change.
//!
//! An `Approval` document in the desired state (added by the pull request
//! tend opened, and merged by whoever CODEOWNERS and branch protection let
//! merge) turns the `review` actions of its resource into `auto` when their
//! change fingerprint is the approved one, the approval has not expired and
//! it was never used. It never touches a `deny` (policy) or an `observe`
//! (mode), and runs before the safety gates, which can still hold or
//! contest the action. A change that differs from the approved one (live
//! state moved on) is not approved.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::model::{Approval, ResourceKey};
use crate::vocab::{change_fingerprint, Action, ApprovalRef, Decision};

/// The approvals already used: by earlier passes (the journal) and by
/// this one.
pub type Used = std::collections::HashSet<(ResourceKey, String, DateTime<Utc>)>;

/// How much later than `approvalTtl` from now an approval may expire:
/// clocks differ, and a pull request waits a little before its merge.
const EXPIRY_SLACK: chrono::Duration = chrono::Duration::hours(1);

/// Approves, in place, the review actions that a valid approval names, and
/// counts each approval granted as used, so that a later step of the same
/// pass cannot use it again. An approval that expires later than `ttl`
/// (`approvalTtl`) from now was not written by tend's pull request and
/// approves nothing: it would approve changes long in the future.
pub fn apply(
    actions: &mut [Action],
    approvals: &[Approval],
    used: &mut Used,
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) {
    if approvals.is_empty() {
        return;
    }
    let latest =
        now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX) + EXPIRY_SLACK;
    for a in actions
        .iter_mut()
        .filter(|a| a.decision == Decision::Review)
    {
        if let Some(far) = approvals
            .iter()
            .find(|ap| ap.target == a.target && ap.expires > latest)
        {
            let why = format!(
                "approval {} ignored: it expires {}, later than approvalTtl allows",
                far.origin.file,
                far.expires
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            if !a.reasons.contains(&why) {
                a.reasons.push(why);
            }
        }
    }
    let mut pending: BTreeMap<&ResourceKey, Vec<&str>> = BTreeMap::new();
    for a in actions.iter().filter(|a| a.decision == Decision::Review) {
        pending.entry(&a.target).or_default().push(&a.fingerprint);
    }
    let granted: Vec<(ResourceKey, ApprovalRef)> = pending
        .into_iter()
        .filter_map(|(key, fps)| {
            let fingerprint = change_fingerprint(fps);
            let approval = approvals.iter().find(|ap| {
                ap.target == *key
                    && ap.fingerprint == fingerprint
                    && ap.expires > now
                    && ap.expires <= latest
                    && !used.contains(&used_key(ap))
            })?;
            used.insert(used_key(approval));
            Some((
                key.clone(),
                ApprovalRef {
                    file: approval.origin.file.to_string(),
                    fingerprint,
                    expires: expiry(approval),
                },
            ))
        })
        .collect();
    for (key, approval) in granted {
        for a in actions
            .iter_mut()
            .filter(|a| a.target == key && a.decision == Decision::Review)
        {
            a.decision = Decision::Auto;
            a.reasons.push(format!(
                "approved by a merged pull request: {} (change {})",
                approval.file, approval.fingerprint
            ));
            a.approval = Some(approval.clone());
        }
    }
}

/// An approval's expiry as the journal keeps it: to the millisecond.
pub fn expiry(a: &Approval) -> DateTime<Utc> {
    use chrono::SubsecRound;
    a.expires.trunc_subsecs(3)
}

/// What identifies an approval among the used ones.
pub fn used_key(a: &Approval) -> (ResourceKey, String, DateTime<Utc>) {
    (a.target.clone(), a.fingerprint.clone(), expiry(a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Kind, Origin};
    use crate::vocab::{ActionType, Risk};

    const WEEK: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

    fn action(decision: Decision, fingerprint: &str) -> Action {
        Action {
            fingerprint: fingerprint.into(),
            action_type: ActionType::Update,
            target: ResourceKey::new(Kind::HostFile, "motd"),
            changes: vec![],
            risk: Risk::Low,
            reversible: true,
            decision,
            reasons: vec!["policy asks for review".into()],
            note: None,
            contested: false,
            declared_at: None,
            incident: None,
            approval: None,
            rollback: None,
            change: None,
        }
    }

    fn approval(fingerprint: &str, expires: DateTime<Utc>) -> Approval {
        Approval {
            name: "host.file.motd".into(),
            target: ResourceKey::new(Kind::HostFile, "motd"),
            fingerprint: fingerprint.into(),
            expires,
            break_glass: false,
            origin: Origin {
                file: "approvals/host.File/motd.yaml".into(),
                line: 1,
                col: 1,
            },
        }
    }

    #[test]
    fn an_approval_allows_exactly_its_fingerprint_once() {
        let now = Utc::now();
        let later = now + chrono::Duration::hours(1);
        let mut actions = vec![action(Decision::Review, "aaaaaaaaaaaaaaaa")];
        apply(
            &mut actions,
            &[approval("aaaaaaaaaaaaaaaa", later)],
            &mut Used::default(),
            now,
            WEEK,
        );
        assert_eq!(actions[0].decision, Decision::Auto);
        assert!(actions[0].approval.is_some());

        // Another change on the same resource is not approved.
        let mut other = vec![action(Decision::Review, "bbbbbbbbbbbbbbbb")];
        apply(
            &mut other,
            &[approval("aaaaaaaaaaaaaaaa", later)],
            &mut Used::default(),
            now,
            WEEK,
        );
        assert_eq!(other[0].decision, Decision::Review);

        // Used once: never again.
        let mut facts = Used::default();
        facts.insert(used_key(&approval("aaaaaaaaaaaaaaaa", later)));
        let mut again = vec![action(Decision::Review, "aaaaaaaaaaaaaaaa")];
        apply(
            &mut again,
            &[approval("aaaaaaaaaaaaaaaa", later)],
            &mut facts,
            now,
            WEEK,
        );
        assert_eq!(again[0].decision, Decision::Review);
        // A new approval of the same change (merged again) is another one.
        let renewed = approval("aaaaaaaaaaaaaaaa", later + chrono::Duration::hours(1));
        apply(&mut again, &[renewed], &mut facts, now, WEEK);
        assert_eq!(again[0].decision, Decision::Auto);
    }

    #[test]
    fn an_approval_never_lifts_a_deny_an_observe_or_an_expired_one() {
        let now = Utc::now();
        for d in [Decision::Deny, Decision::Observe] {
            let mut actions = vec![action(d, "aaaaaaaaaaaaaaaa")];
            apply(
                &mut actions,
                &[approval(
                    "aaaaaaaaaaaaaaaa",
                    now + chrono::Duration::hours(1),
                )],
                &mut Used::default(),
                now,
                WEEK,
            );
            assert_eq!(actions[0].decision, d);
        }
        let mut actions = vec![action(Decision::Review, "aaaaaaaaaaaaaaaa")];
        apply(
            &mut actions,
            &[approval(
                "aaaaaaaaaaaaaaaa",
                now - chrono::Duration::seconds(1),
            )],
            &mut Used::default(),
            now,
            WEEK,
        );
        assert_eq!(actions[0].decision, Decision::Review);
    }

    /// Regression (M2): an approval written by hand to expire far in the
    /// future (pre-approving a change long before it is pending) approves
    /// nothing, and the action says why.
    #[test]
    fn m2_an_approval_beyond_its_lifetime_approves_nothing() {
        let now = Utc::now();
        let mut actions = vec![action(Decision::Review, "aaaaaaaaaaaaaaaa")];
        let far = now + chrono::Duration::days(365 * 900);
        apply(
            &mut actions,
            &[approval("aaaaaaaaaaaaaaaa", far)],
            &mut Used::default(),
            now,
            WEEK,
        );
        assert_eq!(actions[0].decision, Decision::Review);
        assert!(
            actions[0]
                .reasons
                .iter()
                .any(|r| r.contains("later than approvalTtl")),
            "{:?}",
            actions[0].reasons
        );
        let within = now + chrono::Duration::days(7);
        apply(
            &mut actions,
            &[approval("aaaaaaaaaaaaaaaa", within)],
            &mut Used::default(),
            now,
            WEEK,
        );
        assert_eq!(actions[0].decision, Decision::Auto);
    }
}
