//! Deciding before acting: the mode ceiling, Rego policies and the built-in
//! safety gates, combined into one decision per action with its reasons.
//!
//! Order matters and only ever tightens: a policy `deny` is final; the mode
//! ceiling caps what a policy allows; the safety gates can hold or contest
//! an `auto` action but never loosen anything. This module must never let
//! an error turn into `auto`.

mod engine;
pub mod gates;
pub mod testing;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub use engine::{
    default_pack, rego_diagnostic, Policies, PolicyDecision, PolicyFile, Verdict, ENTRY_POINT,
};
pub use gates::{Correction, Facts, GateError, PastOutcome};

use crate::model::{DesiredState, Resource, ResourceKey};
use crate::plan::{Action, Decision, Plan};
use crate::provider::LiveResource;

/// The policy files of a pass: the default pack, plus the files of the
/// repository's policy directories. Repository files only add rules: the
/// default pack cannot be replaced, so its denials always hold. An exact
/// copy of a default file is loaded once.
pub fn policy_files(
    dirs: &[String],
    repo: &[(String, crate::model::SourceFile)],
) -> Vec<PolicyFile> {
    let mut files = default_pack();
    for (rel, file) in repo {
        let under = dirs.iter().any(|d| {
            let d = d.trim_matches('/');
            d == "." || rel.starts_with(&format!("{d}/"))
        });
        if !under {
            continue;
        }
        if files.iter().any(|f| f.text == file.text) {
            continue;
        }
        files.push(PolicyFile {
            path: file.path.clone(),
            text: file.text.clone(),
        });
    }
    files
}

/// The `resource` member of a policy input.
fn resource_json(desired: Option<&Resource>, live: Option<&LiveResource>) -> Value {
    let desired = desired.map(|r| {
        let labels: serde_json::Map<String, Value> = r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        json!({
            "kind": r.key.kind.as_str(),
            "metadata": {"name": r.key.name, "labels": labels, "mode": r.mode},
            "spec": r.spec,
        })
    });
    let live = live.map(|l| json!({"spec": l.spec, "owned": l.owned, "id": l.id}));
    json!({"desired": desired, "live": live})
}

/// Everything a decision depends on besides the action itself.
pub struct Context<'a> {
    pub desired: &'a DesiredState,
    /// `desired` keyed by identity, as the plan already built it.
    pub index: &'a HashMap<&'a ResourceKey, &'a Resource>,
    pub live: &'a HashMap<ResourceKey, LiveResource>,
    pub facts: &'a Facts,
    pub now: DateTime<Utc>,
}

/// The input document for one action (DESIGN.md, "Policy contract").
pub fn input_for(
    action: &Action,
    plan: &Plan,
    ctx: &Context<'_>,
    window: Option<&str>,
    index: &HashMap<&ResourceKey, &Resource>,
) -> Value {
    let recent: Vec<Value> = ctx
        .facts
        .outcomes
        .iter()
        .rev()
        .filter(|o| o.key == action.target)
        .take(10)
        .map(|o| json!({"type": o.action, "outcome": o.outcome, "at": o.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}))
        .collect();
    json!({
        "action": {
            "type": action.action_type.as_str(),
            "target": {"kind": action.target.kind.as_str(), "name": action.target.name},
            "changes": action.changes,
            "risk": action.risk.as_str(),
            "reversible": action.reversible,
        },
        "resource": resource_json(index.get(&action.target).copied(), ctx.live.get(&action.target)),
        "incident": action.incident.as_ref().map_or(Value::Null, |i| json!(i)),
        "context": {
            "mode": plan.mode.as_str(),
            "now": ctx.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "in_maintenance_window": window.is_some(),
            "maintenance_window": window,
            "recent_actions": recent,
            "run": {"actions_planned": plan.actions.len(), "resources_total": plan.resources},
        },
    })
}

/// Decides every action of the plan in place. Fails only for the prune
/// guard, which stops the whole pass.
pub fn decide(
    plan: &mut Plan,
    policies: &mut Policies,
    ctx: &Context<'_>,
) -> Result<(), GateError> {
    let settings = &ctx.desired.settings;
    gates::prune_guard(plan, settings)?;
    let window = gates::open_window(&settings.maintenance_windows, ctx.now).map(|w| w.name.clone());
    let inputs: Vec<Value> = plan
        .actions
        .iter()
        .map(|a| input_for(a, plan, ctx, window.as_deref(), ctx.index))
        .collect();
    for (action, input) in plan.actions.iter_mut().zip(inputs) {
        let verdict = policies.decide(&input);
        combine(action, verdict);
    }
    gates::apply(plan, settings, ctx.facts, ctx.now);
    Ok(())
}

/// Policy verdict and mode ceiling: `deny` wins; otherwise the stricter of
/// the two. The ceiling's reason (already on the action) is kept when it is
/// what limits the decision.
fn combine(action: &mut Action, verdict: PolicyDecision) {
    let ceiling = action.decision;
    let ceiling_reasons = std::mem::take(&mut action.reasons);
    let (decision, mut reasons) = match (verdict.decision, ceiling) {
        (Verdict::Deny, _) => (Decision::Deny, verdict.reasons),
        (_, Decision::Observe) => (Decision::Observe, ceiling_reasons.clone()),
        (Verdict::Review, _) => (Decision::Review, verdict.reasons),
        (Verdict::Auto, Decision::Auto) => (Decision::Auto, verdict.reasons),
        (Verdict::Auto, other) => (other, ceiling_reasons.clone()),
    };
    if decision == Decision::Observe
        || (verdict.decision == Verdict::Auto && decision != Decision::Auto)
    {
        reasons.push(match verdict.decision {
            Verdict::Auto => "policy would allow it".to_string(),
            Verdict::Review => "policy asks for review".to_string(),
            Verdict::Deny => "policy denies it".to_string(),
        });
    }
    action.decision = decision;
    action.reasons = reasons;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::plan::{ActionType, Risk};

    fn action(ceiling: Decision) -> Action {
        Action {
            fingerprint: String::new(),
            action_type: ActionType::Update,
            target: ResourceKey::new(Kind::HostFile, "a"),
            changes: vec![],
            risk: Risk::Low,
            reversible: true,
            decision: ceiling,
            reasons: vec!["mode is recommend".into()],
            note: None,
            contested: false,
            declared_at: None,
            incident: None,
        }
    }

    fn verdict(v: Verdict) -> PolicyDecision {
        PolicyDecision {
            decision: v,
            reasons: vec!["rule".into()],
        }
    }

    #[test]
    fn deny_wins_over_every_ceiling() {
        for ceiling in [Decision::Auto, Decision::Review, Decision::Observe] {
            let mut a = action(ceiling);
            combine(&mut a, verdict(Verdict::Deny));
            assert_eq!(a.decision, Decision::Deny);
        }
    }

    #[test]
    fn the_ceiling_caps_an_auto_verdict() {
        let mut a = action(Decision::Review);
        combine(&mut a, verdict(Verdict::Auto));
        assert_eq!(a.decision, Decision::Review);
        assert_eq!(
            a.reasons,
            vec!["mode is recommend", "policy would allow it"]
        );
        let mut a = action(Decision::Auto);
        combine(&mut a, verdict(Verdict::Review));
        assert_eq!(
            (a.decision, a.reasons),
            (Decision::Review, vec!["rule".to_string()])
        );
    }

    #[test]
    fn repository_policies_add_to_the_default_pack() {
        let repo = vec![
            (
                "policies/delete.rego".to_string(),
                crate::model::SourceFile {
                    path: "repo/policies/delete.rego".into(),
                    text: "package tend\n".into(),
                },
            ),
            (
                "policies/copy.rego".to_string(),
                crate::model::SourceFile {
                    path: "repo/policies/copy.rego".into(),
                    text: include_str!("../../policies/host.rego").into(),
                },
            ),
            (
                "other/x.rego".to_string(),
                crate::model::SourceFile {
                    path: "repo/other/x.rego".into(),
                    text: "package tend\n".into(),
                },
            ),
        ];
        let files = policy_files(&["policies".into()], &repo);
        assert!(files.iter().any(|f| f.path == "repo/policies/delete.rego"));
        assert!(files.iter().any(|f| f.path == "policies/delete.rego"));
        assert!(
            !files.iter().any(|f| f.path == "repo/policies/copy.rego"),
            "an exact copy loads once"
        );
        assert!(
            !files.iter().any(|f| f.path == "repo/other/x.rego"),
            "not under a policy dir"
        );
    }
}
