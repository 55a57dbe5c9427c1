//! Deciding before acting: the mode ceiling, Rego policies and the built-in
//! safety gates, combined into one decision per action with its reasons.
//!
//! Order matters and only ever tightens: a policy `deny` is final; the mode
//! ceiling caps what a policy allows; the safety gates can hold or contest
//! an `auto` action but never loosen anything. This module must never let
//! an error turn into `auto`.

pub mod approve;
mod check;
mod engine;
pub mod gates;
mod limits;
pub mod testing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

pub use engine::{
    default_pack, rego_diagnostic, Policies, PolicyDecision, PolicyFile, Verdict, ENTRY_POINT,
};
pub use gates::{Correction, Facts, GateError, PastOutcome};
pub use limits::{MAX_RANGE, TIME_LIMIT};

use crate::model::{DesiredState, Mode, Resource, ResourceKey};
use crate::plan::Plan;
use crate::vocab::{Action, Decision, LiveResource, Secrets};

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

/// The `resource` member of a policy input. Secret-looking fields carry a
/// keyed digest instead of their value: a policy can tell a secret is set
/// and whether desired and live agree, but can never read or print it.
fn resource_json(
    desired: Option<&Resource>,
    live: Option<&LiveResource>,
    secrets: &Secrets,
) -> Value {
    let desired = desired.map(|r| {
        let labels: serde_json::Map<String, Value> = r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        json!({
            "kind": r.key.kind.as_str(),
            "metadata": {"name": r.key.name, "labels": labels, "mode": r.mode},
            "spec": secrets.redact_spec(&r.spec),
        })
    });
    let live =
        live.map(|l| json!({"spec": secrets.redact_spec(&l.spec), "owned": l.owned, "id": l.id}));
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
    /// Scrubbed from every reason a policy gives.
    pub secrets: &'a Secrets,
}

/// What the pass as a whole looks like to a policy (`context.run`).
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub mode: Mode,
    pub actions_planned: usize,
    pub resources_total: usize,
}

impl Run {
    pub fn of(plan: &Plan) -> Run {
        Run {
            mode: plan.mode,
            actions_planned: plan.actions.len(),
            resources_total: plan.resources,
        }
    }
}

/// The input document for one action (ARCHITECTURE.md, "Policy input").
pub fn input_for(
    action: &Action,
    run: Run,
    ctx: &Context<'_>,
    now: DateTime<Utc>,
    window: Option<&str>,
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
    // A rollback is decided on the spec it applies, not the declared one.
    let desired = ctx
        .index
        .get(&action.target)
        .map(|r| match &action.rollback {
            Some(good) => std::borrow::Cow::Owned(Resource {
                spec: good.spec.clone(),
                ..(*r).clone()
            }),
            None => std::borrow::Cow::Borrowed(*r),
        });
    json!({
        "action": {
            "type": action.action_type.as_str(),
            "target": {"kind": action.target.kind.as_str(), "name": action.target.name},
            "changes": action.changes,
            "risk": action.risk.as_str(),
            "reversible": action.reversible,
        },
        "resource": resource_json(desired.as_deref(), ctx.live.get(&action.target), ctx.secrets),
        "incident": action.incident.as_ref().map_or(Value::Null, |i| json!(i)),
        "change": action.change.as_ref().map_or(Value::Null, |c| json!({
            "commit": c.commit,
            "fields": c.fields,
            "wave": c.wave,
            "in_window": c.in_window,
        })),
        "context": {
            "mode": run.mode.as_str(),
            "now": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "in_maintenance_window": window.is_some(),
            "maintenance_window": window,
            "recent_actions": recent,
            "run": {"actions_planned": run.actions_planned, "resources_total": run.resources_total},
        },
    })
}

/// Below this many actions, deciding on one thread is faster than
/// starting workers.
const PARALLEL_FROM: usize = 64;

/// How long all policy evaluations of one pass may take together. Each
/// decision stops at [`TIME_LIMIT`], but a policy that runs to the limit on
/// every action would otherwise stall a pass for the limit times the
/// actions; past the budget, the pass's remaining actions are denied.
pub const PASS_BUDGET: std::time::Duration = std::time::Duration::from_secs(30);

/// Evaluates the policies for every input, in parallel across the
/// machine's cores when there are many.
pub fn evaluate_all(policies: &Policies, inputs: &[Value], threads: usize) -> Vec<PolicyDecision> {
    evaluate_until(policies, inputs, threads, None)
}

/// One decision, unless the pass's policy budget is spent (then `deny`).
/// Policy decisions made by this process, and the time they took.
pub static EVALUATIONS: AtomicUsize = AtomicUsize::new(0);
pub static EVALUATION_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn decide_before(
    policies: &Policies,
    input: &Value,
    deadline: Option<std::time::Instant>,
) -> PolicyDecision {
    let started = std::time::Instant::now();
    let d = decide_unmetered(policies, input, deadline);
    EVALUATIONS.fetch_add(1, Ordering::Relaxed);
    EVALUATION_NANOS.fetch_add(
        started.elapsed().as_nanos().min(u64::MAX as u128) as u64,
        Ordering::Relaxed,
    );
    d
}

fn decide_unmetered(
    policies: &Policies,
    input: &Value,
    deadline: Option<std::time::Instant>,
) -> PolicyDecision {
    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
        return PolicyDecision {
            decision: Verdict::Deny,
            reasons: vec![format!(
                "policy evaluation stopped: this pass's policy time budget ({}) is spent; the policies take too long",
                humantime::format_duration(PASS_BUDGET)
            )],
        };
    }
    policies.decide(input)
}

/// [`evaluate_all`], denying what is left once `deadline` passes.
fn evaluate_until(
    policies: &Policies,
    inputs: &[Value],
    threads: usize,
    deadline: Option<std::time::Instant>,
) -> Vec<PolicyDecision> {
    let threads = threads
        .max(1)
        .min(inputs.len().div_ceil(PARALLEL_FROM).max(1));
    let decide = move |i: &Value| decide_before(policies, i, deadline);
    if threads == 1 {
        return inputs.iter().map(decide).collect();
    }
    let chunk = inputs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = inputs
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(decide).collect()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join().unwrap_or_else(|_| {
                    // A worker that panicked decided nothing: fail closed.
                    vec![
                        PolicyDecision {
                            decision: Verdict::Deny,
                            reasons: vec!["policy evaluation failed: a worker stopped".into()],
                        };
                        chunk
                    ]
                })
            })
            .take(inputs.len())
            .collect()
    })
}

/// The cores policies are decided on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The one place actions are decided: the plan's drift corrections and
/// runbook steps at once, and later steps of a runbook one by one, all
/// with the same policies, pass context and action budget.
pub struct Decider<'a> {
    pub policies: &'a Policies,
    pub ctx: Context<'a>,
    run: std::sync::OnceLock<Run>,
    /// When the pass's policy time budget is spent.
    deadline: std::time::Instant,
    /// Actions of this pass's budget already allowed.
    spent: AtomicUsize,
    /// Approvals used, by earlier passes and by this one.
    used: std::sync::Mutex<approve::Used>,
}

impl<'a> Decider<'a> {
    pub fn new(policies: &'a Policies, ctx: Context<'a>) -> Decider<'a> {
        let used = ctx.facts.used_approvals.clone();
        Decider {
            policies,
            ctx,
            run: std::sync::OnceLock::new(),
            deadline: std::time::Instant::now() + PASS_BUDGET,
            spent: AtomicUsize::new(0),
            used: std::sync::Mutex::new(used),
        }
    }

    /// Decides every action of the plan in place. Fails only for the prune
    /// guard, which stops the whole pass.
    pub fn decide_plan(&self, plan: &mut Plan) -> Result<(), GateError> {
        let settings = &self.ctx.desired.settings;
        gates::prune_guard(plan, settings)?;
        let run = *self.run.get_or_init(|| Run::of(plan));
        let now = self.ctx.now;
        let window = gates::open_window(&settings.maintenance_windows, now).map(|w| w.name.clone());
        let inputs: Vec<Value> = plan
            .actions
            .iter()
            .map(|a| input_for(a, run, &self.ctx, now, window.as_deref()))
            .collect();
        let verdicts = evaluate_until(
            self.policies,
            &inputs,
            default_threads(),
            Some(self.deadline),
        );
        for (action, verdict) in plan.actions.iter_mut().zip(verdicts) {
            combine(action, self.scrubbed(verdict));
        }
        if let Ok(mut used) = self.used.lock() {
            approve::apply(
                &mut plan.actions,
                &self.ctx.desired.approvals,
                &mut used,
                now,
                settings.review.approval_ttl(),
            );
        }
        let allowed = gates::apply_to(&mut plan.actions, 0, settings, self.ctx.facts, now);
        if let Ok(mut used) = self.used.lock() {
            gates::frozen(
                &mut plan.actions,
                &settings.freeze_windows,
                self.ctx.index,
                &self.ctx.desired.approvals,
                &mut used,
                now,
            );
        }
        gates::paused(&mut plan.actions, &self.ctx.facts.pauses, self.ctx.index);
        crate::budget::gate(
            &mut plan.actions,
            &self.ctx.facts.fleet,
            self.ctx.desired,
            self.ctx.index,
        );
        self.spent.store(allowed, Ordering::SeqCst);
        Ok(())
    }

    /// Decides one action planned during the pass (a runbook's next step
    /// after one that did not heal): the mode ceiling, the policies and the
    /// gates, counted against the same action budget as the plan.
    pub fn decide_one(&self, mut action: Action) -> Action {
        let settings = &self.ctx.desired.settings;
        let now = Utc::now();
        let run = self.run.get().copied().unwrap_or(Run {
            mode: settings.mode,
            actions_planned: 0,
            resources_total: self.ctx.desired.resources.len(),
        });
        let declared = self.ctx.index.get(&action.target).and_then(|r| r.mode);
        (action.decision, action.reasons) = crate::plan::ceiling(run.mode, declared);
        // A signature trusted to recommend: its steps wait for a human.
        let recommend = action
            .incident
            .as_ref()
            .is_some_and(|i| i.trust == crate::model::health::Trust::Recommend);
        if recommend && action.decision == Decision::Auto {
            action.decision = Decision::Review;
            action.reasons = vec![format!(
                "signature `{}` is trusted to recommend, not to act (spec.trust)",
                action
                    .incident
                    .as_ref()
                    .and_then(|i| i.signature.as_deref())
                    .unwrap_or("")
            )];
        }
        let window = gates::open_window(&settings.maintenance_windows, now).map(|w| w.name.clone());
        let input = input_for(&action, run, &self.ctx, now, window.as_deref());
        let verdict = decide_before(self.policies, &input, Some(self.deadline));
        combine(&mut action, self.scrubbed(verdict));
        let spent = self.spent.load(Ordering::SeqCst);
        let one = std::slice::from_mut(&mut action);
        if let Ok(mut used) = self.used.lock() {
            approve::apply(
                one,
                &self.ctx.desired.approvals,
                &mut used,
                now,
                settings.review.approval_ttl(),
            );
        }
        let allowed = gates::apply_to(one, spent, settings, self.ctx.facts, now);
        if let Ok(mut used) = self.used.lock() {
            gates::frozen(
                one,
                &settings.freeze_windows,
                self.ctx.index,
                &self.ctx.desired.approvals,
                &mut used,
                now,
            );
        }
        gates::paused(one, &self.ctx.facts.pauses, self.ctx.index);
        crate::budget::gate(one, &self.ctx.facts.fleet, self.ctx.desired, self.ctx.index);
        self.spent.fetch_add(allowed, Ordering::SeqCst);
        action
    }
}

impl Decider<'_> {
    /// A verdict whose reasons name no secret, whatever the policy wrote.
    fn scrubbed(&self, mut verdict: PolicyDecision) -> PolicyDecision {
        for r in &mut verdict.reasons {
            *r = self.ctx.secrets.scrub(r);
        }
        verdict
    }
}

/// Decides every action of the plan in place (see [`Decider::decide_plan`]).
pub fn decide(plan: &mut Plan, policies: &Policies, ctx: Context<'_>) -> Result<(), GateError> {
    Decider::new(policies, ctx).decide_plan(plan)
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

impl Facts {
    /// What the store remembers that the gates count: outcomes within the
    /// cooldown, circuit breaker and a day, corrections within the fight
    /// detection window, and every approval used.
    pub fn read(
        store: &dyn crate::state::Store,
        settings: &crate::model::Settings,
        now: DateTime<Utc>,
    ) -> Result<Facts, crate::state::StateError> {
        let back = |d: std::time::Duration| {
            now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
        };
        let safety = &settings.safety;
        let horizon = safety
            .cooldown
            .0
            .max(safety.circuit_breaker.window.0)
            .max(std::time::Duration::from_secs(24 * 3600));
        let outcomes = store
            .outcomes_since(back(horizon))?
            .into_iter()
            .filter_map(|e| {
                Some(gates::PastOutcome {
                    key: e.key,
                    action: e.action,
                    outcome: e.outcome?,
                    at: e.at,
                })
            })
            .collect();
        let corrections = store
            .corrections_since(back(safety.fight_detection.window.0))?
            .into_iter()
            .map(|c| gates::Correction {
                key: c.key,
                path: c.path,
                at: c.at,
            })
            .collect();
        let used_approvals = store
            .used_approvals()?
            .into_iter()
            .map(|u| (u.key, u.fingerprint, u.expires))
            .collect();
        Ok(Facts {
            corrections,
            outcomes,
            used_approvals,
            pauses: store.pauses(now)?,
            fleet: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::vocab::{ActionType, Risk};

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
            approval: None,
            rollback: None,
            change: None,
        }
    }

    fn verdict(v: Verdict) -> PolicyDecision {
        PolicyDecision {
            decision: v,
            reasons: vec!["rule".into()],
        }
    }

    #[test]
    fn a_spent_policy_budget_denies_the_rest_of_the_pass() {
        let p = Policies::compile(&default_pack()).unwrap();
        let inputs = vec![json!({}); 3];
        let past = Some(std::time::Instant::now() - std::time::Duration::from_secs(1));
        let out = evaluate_until(&p, &inputs, 1, past);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|d| d.decision == Verdict::Deny));
        assert!(out[0].reasons[0].contains("policy time budget"), "{out:?}");
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
