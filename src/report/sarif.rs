//! SARIF 2.1.0: drift as code-scanning results pointing at the desired-state
//! lines that declare each resource.

use serde_json::{json, Value};

use crate::plan::Plan;
use crate::vocab::{ActionType, Decision};

fn rule_id(t: ActionType) -> &'static str {
    match t {
        ActionType::Create => "tend/missing",
        ActionType::Update => "tend/drift",
        ActionType::Delete => "tend/undeclared",
        ActionType::Restart => "tend/not-running",
        ActionType::Stop => "tend/should-be-stopped",
        ActionType::Replace | ActionType::Scale | ActionType::Command => "tend/unhealthy",
    }
}

fn rule(t: ActionType) -> Value {
    let (name, text) = match t {
        ActionType::Create => ("Missing", "A declared resource does not exist."),
        ActionType::Update => ("Drift", "A resource differs from its declaration."),
        ActionType::Delete => ("Undeclared", "A resource tend owns is no longer declared."),
        ActionType::Restart => ("NotRunning", "A declared process is not running."),
        ActionType::Stop => (
            "ShouldBeStopped",
            "A process declared as stopped is running.",
        ),
        ActionType::Replace | ActionType::Scale | ActionType::Command => (
            "Unhealthy",
            "A resource is unhealthy and a runbook step heals it.",
        ),
    };
    json!({"id": rule_id(t), "name": name, "shortDescription": {"text": text}})
}

/// `deny` and contested actions need attention; the rest is drift tend
/// corrects or proposes.
fn level(d: Decision, contested: bool) -> &'static str {
    match d {
        Decision::Deny => "error",
        _ if contested => "error",
        Decision::Auto | Decision::Deferred => "note",
        Decision::Review | Decision::Observe => "warning",
    }
}

pub fn plan_sarif(plan: &Plan) -> Value {
    let types = [
        ActionType::Create,
        ActionType::Update,
        ActionType::Delete,
        ActionType::Restart,
        ActionType::Stop,
        ActionType::Replace,
    ];
    let escalations = plan
        .remedies
        .iter()
        .filter(|r| r.escalated || r.step.is_none())
        .map(|r| {
            json!({
                "ruleId": "tend/escalated",
                "level": "error",
                "message": {"text": format!(
                    "{}: {}; runbook `{}` is exhausted and a human must act",
                    r.target, r.problem.cause, r.runbook
                )},
                "properties": {"target": r.target, "incident": r.incident},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": &*r.declared_at.file},
                        "region": {"startLine": r.declared_at.line, "startColumn": r.declared_at.col},
                    }
                }],
            })
        });
    let results: Vec<Value> = plan
        .actions
        .iter()
        .map(|a| {
            let fields: Vec<&str> = a.changes.iter().map(|c| c.path.as_str()).collect();
            let mut text = format!(
                "{} {}: {} (decision {}: {})",
                a.target,
                a.action_type.as_str(),
                if fields.is_empty() {
                    "no field changes".to_string()
                } else {
                    fields.join(", ")
                },
                a.decision.as_str(),
                a.reasons.join("; ")
            );
            if let Some(note) = &a.note {
                text.push_str(&format!("; {note}"));
            }
            let mut result = json!({
                "ruleId": rule_id(a.action_type),
                "level": level(a.decision, a.contested),
                "message": {"text": text},
                "partialFingerprints": {"tendAction/v1": a.fingerprint},
                "properties": {"decision": a.decision, "risk": a.risk, "target": a.target},
            });
            if let Some(origin) = &a.declared_at {
                result["locations"] = json!([{
                    "physicalLocation": {
                        "artifactLocation": {"uri": &*origin.file},
                        "region": {"startLine": origin.line, "startColumn": origin.col},
                    }
                }]);
            }
            result
        })
        .chain(escalations)
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "tend",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": types.iter().map(|t| rule(*t)).chain(std::iter::once(json!({
                    "id": "tend/escalated",
                    "name": "Escalated",
                    "shortDescription": {"text": "A resource stayed unhealthy after every step of its runbook."},
                }))).collect::<Vec<_>>(),
            }},
            "versionControlProvenance": plan.source.commit.as_ref().map(|c| json!([{
                // The origin is `url@ref`; SARIF wants the URL alone.
                "repositoryUri": plan.source.origin.rsplit_once('@').map_or(plan.source.origin.as_str(), |(u, _)| u),
                "revisionId": c,
            }])).unwrap_or(json!([])),
            "results": results,
        }],
    })
}
