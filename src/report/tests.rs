//! Snapshots of the rendered plan formats.

use serde_json::json;

use super::human::render_results;
use super::*;
use crate::act::{ActionResult, Outcome};
use crate::model::{Kind, Mode, ResourceKey};
use crate::plan::{Plan, SourceInfo, Unmanaged};
use crate::vocab::{
    fingerprint, Action, ActionType, Decision, FieldChange, IncidentStatus, Risk, StepOutcome,
};

fn action(
    t: ActionType,
    kind: Kind,
    name: &str,
    changes: Vec<FieldChange>,
    decision: Decision,
) -> Action {
    let target = ResourceKey::new(kind, name);
    Action {
        fingerprint: fingerprint(t, &target, &changes),
        action_type: t,
        target,
        changes,
        risk: if t == ActionType::Delete {
            Risk::High
        } else {
            Risk::Low
        },
        reversible: t != ActionType::Delete,
        decision,
        reasons: vec!["mode is auto".into()],
        note: None,
        contested: false,
        declared_at: None,
        incident: None,
        approval: None,
        rollback: None,
        change: None,
    }
}

fn sample_plan() -> Plan {
    let mut restart = action(
        ActionType::Restart,
        Kind::HostProcess,
        "sample-app",
        vec![FieldChange {
            path: "/spec/state".into(),
            from: json!("stopped"),
            to: json!("running"),
        }],
        Decision::Auto,
    );
    restart.note = Some("pid 4242 has exited".into());
    Plan {
        source: SourceInfo {
            origin: "git://127.0.0.1/infra.git@main".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        },
        mode: Mode::Auto,
        resources: 4,
        in_sync: 1,
        actions: vec![
            action(
                ActionType::Create,
                Kind::HostFile,
                "banner",
                vec![
                    FieldChange {
                        path: "/spec/path".into(),
                        from: json!(null),
                        to: json!("/etc/banner"),
                    },
                    FieldChange {
                        path: "/spec/content".into(),
                        from: json!(null),
                        to: json!("hi\n"),
                    },
                ],
                Decision::Auto,
            ),
            action(
                ActionType::Update,
                Kind::HostFile,
                "motd",
                vec![
                    FieldChange {
                        path: "/spec/content".into(),
                        from: json!("welcome\nto mars\nbye\n"),
                        to: json!("welcome\nto earth\nbye\n"),
                    },
                    FieldChange {
                        path: "/spec/mode".into(),
                        from: json!("0666"),
                        to: json!("0644"),
                    },
                ],
                Decision::Review,
            ),
            restart,
        ],
        unmanaged: vec![Unmanaged {
            target: ResourceKey::new(Kind::HostFile, "old"),
            reason: "no longer declared; prune is disabled".into(),
        }],
        health: vec![],
        remedies: vec![],
        held: Vec::new(),
        paused: Vec::new(),
    }
}

#[test]
fn human_plan() {
    insta::assert_snapshot!(render_plan(&sample_plan(), false));
}

#[test]
fn sarif_plan() {
    let mut plan = sample_plan();
    plan.actions[1].declared_at = Some(crate::model::Origin {
        file: "desired/motd.yaml".into(),
        line: 5,
        col: 1,
    });
    insta::assert_json_snapshot!(plan_sarif(&plan));
}

#[test]
fn json_plan() {
    insta::assert_json_snapshot!(plan_json(&sample_plan()));
}

#[test]
fn markdown_plan_with_results() {
    let plan = sample_plan();
    let results = vec![
        ActionResult {
            fingerprint: plan.actions[0].fingerprint.clone(),
            target: plan.actions[0].target.clone(),
            action_type: "create".into(),
            outcome: Outcome::Synced {
                detail: "/etc/banner: wrote 3 bytes".into(),
            },
            duration_ms: 1,
        },
        ActionResult {
            fingerprint: plan.actions[1].fingerprint.clone(),
            target: plan.actions[1].target.clone(),
            action_type: "update".into(),
            outcome: Outcome::Skipped {
                reason: "decision is review".into(),
            },
            duration_ms: 0,
        },
        ActionResult {
            fingerprint: plan.actions[2].fingerprint.clone(),
            target: plan.actions[2].target.clone(),
            action_type: "restart".into(),
            outcome: Outcome::Failed {
                error: "failed to restart host.Process/sample-app: `x` exited at once".into(),
            },
            duration_ms: 300,
        },
    ];
    insta::assert_snapshot!(render_markdown(&plan, Some(&results)));
    insta::assert_snapshot!(render_results(&results, false));
}

#[test]
fn empty_plan_says_so() {
    let mut plan = sample_plan();
    plan.actions.clear();
    plan.unmanaged.clear();
    assert_eq!(
        render_plan(&plan, false),
        "Plan for git://127.0.0.1/infra.git@main at commit 0123456789ab (mode auto)\n\nNo changes: 1 resource in sync.\n"
    );
}

fn escalated_incident() -> crate::state::Incident {
    let at = |s: &str| crate::state::parse_ts(s).unwrap();
    let step = |n: u32, action: &str, outcome: &str, detail: &str| crate::state::IncidentStep {
        step: Some(n),
        action: crate::model::health::StepAction::parse(action),
        decision: Some(crate::vocab::Decision::Auto),
        outcome: StepOutcome::parse(outcome).unwrap(),
        detail: detail.into(),
        started_at: at("2026-11-21T10:00:03.000Z"),
        finished_at: at("2026-11-21T10:00:07.000Z"),
        duration_ms: 4000,
    };
    crate::state::Incident {
        id: 7,
        key: crate::model::ResourceKey::new(crate::model::Kind::HostProcess, "web"),
        status: IncidentStatus::Escalated,
        cause: "memory leak".into(),
        signature: Some("memory-leak".into()),
        change: None,
        why: Some("`memory-leak` (2 conditions) was chosen over `error-storm` (1 condition, less specific)".into()),
        runbook: Some("restart-then-escalate".into()),
        severity: crate::model::health::Severity::Warning,
        symptoms: json!([
            {"signal": "error-ratio", "status": "unhealthy", "value": 0.42, "detail": "0.42 > 0.2", "since": "2026-11-21T10:00:00Z"},
            {"signal": "memory-growth", "status": "unhealthy", "value": 5242880.0, "detail": "5242880 > 1048576", "since": "2026-11-21T09:59:50Z"}
        ]),
        onset_at: at("2026-11-21T09:59:49.000Z"),
        detected_at: at("2026-11-21T10:00:03.000Z"),
        resolved_at: None,
        next_step: 2,
        state: "unhealthy: error-ratio 0.42 > 0.2".into(),
        recommendation: "a human should investigate memory leak on host.Process/web".into(),
        time_to_detect_ms: 14000,
        time_to_recover_ms: None,
        node: None,
        steps: vec![
            step(
                0,
                "restart",
                "not-verified",
                "started pid 42; not verified within 20s: error-ratio unhealthy: 0.42 > 0.2",
            ),
            step(
                2,
                "escalate",
                "escalated",
                "runbook `restart-then-escalate` is exhausted",
            ),
        ],
    }
}

#[test]
fn incident_summary() {
    let i = escalated_incident();
    insta::assert_snapshot!(render_incident(&i, false));
    insta::assert_snapshot!(render_incidents(&[i], false));
}

/// Signals that read unknown for one reason are one line naming them all,
/// and a reason repeated within one reading is said once; a resource about
/// to be created is one line.
#[test]
fn health_says_each_thing_once() {
    use crate::health::{Assessment, Reading, Tracked};
    let at = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let unknown = |signal: &str, detail: &str| Tracked {
        reading: Reading {
            signal: signal.into(),
            status: crate::vocab::Status::Unknown,
            value: None,
            detail: detail.into(),
        },
        since: at,
        last_healthy: None,
    };
    let down = "Prometheus unreachable: Connection refused (os error 111)";
    let mut plan = sample_plan();
    plan.actions.retain(|a| a.action_type != ActionType::Create);
    plan.actions.push(action(
        ActionType::Create,
        Kind::HostProcess,
        "new-app",
        Vec::new(),
        Decision::Auto,
    ));
    plan.remedies.clear();
    plan.health = vec![
        Assessment {
            target: ResourceKey::new(Kind::HostProcess, "sample-app"),
            signals: vec![
                unknown("error-ratio", down),
                unknown("memory-growth", down),
                unknown("burn-rate/error-budget", &format!("{down}; {down}")),
                unknown("http", "target down: Connection refused (os error 111)"),
            ],
            slos: Vec::new(),
            problem: None,
            shadow: Vec::new(),
        },
        Assessment {
            target: ResourceKey::new(Kind::HostProcess, "new-app"),
            signals: vec![unknown("error-ratio", down)],
            slos: Vec::new(),
            problem: None,
            shadow: Vec::new(),
        },
    ];
    let text = render_plan(&plan, false);
    let health = text
        .split("Health\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    insta::assert_snapshot!(health);
}
