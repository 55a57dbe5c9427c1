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

/// Approves, in place, the review actions that a valid approval names, and
/// counts each approval granted as used, so that a later step of the same
/// pass cannot use it again.
pub fn apply(actions: &mut [Action], approvals: &[Approval], used: &mut Used, now: DateTime<Utc>) {
    if approvals.is_empty() {
        return;
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
        }
    }

    fn approval(fingerprint: &str, expires: DateTime<Utc>) -> Approval {
        Approval {
            name: "host.file.motd".into(),
            target: ResourceKey::new(Kind::HostFile, "motd"),
            fingerprint: fingerprint.into(),
            expires,
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
        );
        assert_eq!(again[0].decision, Decision::Review);
        // A new approval of the same change (merged again) is another one.
        let renewed = approval("aaaaaaaaaaaaaaaa", later + chrono::Duration::hours(1));
        apply(&mut again, &[renewed], &mut facts, now);
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
        );
        assert_eq!(actions[0].decision, Decision::Review);
    }
}
