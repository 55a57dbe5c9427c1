//! JSON: the stable, versioned machine format (documented in README).

use serde_json::{json, Value};

use crate::act::ActionResult;
use crate::plan::Plan;
use crate::state::JournalEntry;
use crate::vocab::{ActionType, Decision};

/// Bumped on any incompatible change to the JSON shape.
pub const FORMAT_VERSION: u32 = 1;

fn summary(plan: &Plan) -> Value {
    json!({
        "resources": plan.resources,
        "inSync": plan.in_sync,
        "pending": plan.pending(),
        "create": plan.count(ActionType::Create),
        "update": plan.count(ActionType::Update),
        "restart": plan.count(ActionType::Restart),
        "stop": plan.count(ActionType::Stop),
        "delete": plan.count(ActionType::Delete),
        "unmanaged": plan.unmanaged.len(),
        "decisions": {
            "auto": decided(plan, Decision::Auto),
            "deferred": decided(plan, Decision::Deferred),
            "review": decided(plan, Decision::Review),
            "observe": decided(plan, Decision::Observe),
            "deny": decided(plan, Decision::Deny),
        },
        "contested": plan.actions.iter().filter(|a| a.contested).count(),
        "held": plan.held.len(),
    })
}

fn decided(plan: &Plan, d: Decision) -> usize {
    plan.actions.iter().filter(|a| a.decision == d).count()
}

fn body(plan: &Plan, kind: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("apiVersion".into(), json!("tend.dev/v1"));
    m.insert("kind".into(), json!(kind));
    m.insert("formatVersion".into(), json!(FORMAT_VERSION));
    m.insert("source".into(), json!(plan.source));
    m.insert("mode".into(), json!(plan.mode));
    m.insert("summary".into(), summary(plan));
    m.insert("actions".into(), json!(plan.actions));
    m.insert("unmanaged".into(), json!(plan.unmanaged));
    m.insert("health".into(), json!(plan.health));
    m.insert("remedies".into(), json!(plan.remedies));
    m.insert("held".into(), json!(plan.held));
    m.insert("paused".into(), json!(plan.paused));
    m
}

pub fn plan_json(plan: &Plan) -> Value {
    Value::Object(body(plan, "Plan"))
}

pub fn apply_json(plan: &Plan, results: &[ActionResult]) -> Value {
    let mut m = body(plan, "Apply");
    let count = |label: &str| {
        results
            .iter()
            .filter(|r| r.outcome.label() == label)
            .count()
    };
    m.insert(
        "results".into(),
        json!({
            "applied": count("synced"),
            "failed": count("failed"),
            "skipped": count("skipped"),
            "actions": results,
        }),
    );
    Value::Object(m)
}

pub fn history_json(entries: &[JournalEntry]) -> Value {
    json!({
        "apiVersion": "tend.dev/v1",
        "kind": "History",
        "formatVersion": FORMAT_VERSION,
        "entries": entries,
    })
}
