//! Human text: what a platform engineer reads in a terminal or CI log.

use std::fmt::Write as _;

use super::{is_text_change, show, unified, Palette};
use crate::act::{ActionResult, Outcome};
use crate::plan::Plan;
use crate::state::JournalEntry;
use crate::vocab::{Action, ActionType, JournalPhase};

fn marker(t: ActionType, p: &Palette) -> (String, &'static str) {
    let (sym, col) = match t {
        ActionType::Create => ("+", p.green),
        ActionType::Update => ("~", p.yellow),
        ActionType::Delete => ("-", p.red),
        ActionType::Restart => ("↻", p.cyan),
        ActionType::Stop => ("■", p.yellow),
        ActionType::Replace => ("±", p.red),
        ActionType::Scale => ("⇅", p.yellow),
        ActionType::Command => ("$", p.cyan),
    };
    (sym.to_string(), col)
}

pub fn render_plan(plan: &Plan, color: bool) -> String {
    let p = Palette::new(color);
    let mut out = String::new();
    let commit = plan
        .source
        .commit
        .as_deref()
        .map(|c| format!(" at commit {}", &c[..c.len().min(12)]))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{}Plan for {}{commit}{} {}(mode {}){}",
        p.bold, plan.source.origin, p.reset, p.dim, plan.mode, p.reset
    );
    out.push('\n');
    for a in &plan.actions {
        render_action(&mut out, a, &p);
    }
    for u in &plan.unmanaged {
        let _ = writeln!(
            out,
            "{}? {}{}  {}unmanaged: {}{}",
            p.dim, u.target, p.reset, p.dim, u.reason, p.reset
        );
    }
    if !plan.actions.is_empty() || !plan.unmanaged.is_empty() {
        out.push('\n');
    }
    super::health::render_health(&mut out, plan, color);
    let _ = writeln!(out, "{}", summary_line(plan));
    out
}

pub(super) fn summary_line(plan: &Plan) -> String {
    if plan.actions.is_empty() {
        return format!(
            "No changes: {} resource{} in sync{}.",
            plan.in_sync,
            if plan.in_sync == 1 { "" } else { "s" },
            unmanaged_suffix(plan)
        );
    }
    let mut parts = Vec::new();
    for (t, word) in [
        (ActionType::Create, "to create"),
        (ActionType::Update, "to update"),
        (ActionType::Restart, "to restart"),
        (ActionType::Stop, "to stop"),
        (ActionType::Replace, "to replace"),
        (ActionType::Scale, "to scale"),
        (ActionType::Command, "commands to run"),
        (ActionType::Delete, "to delete"),
    ] {
        let n = plan.count(t);
        if n > 0
            || matches!(
                t,
                ActionType::Create | ActionType::Update | ActionType::Delete
            )
        {
            parts.push(format!("{n} {word}"));
        }
    }
    format!(
        "Plan: {}; {} in sync{}. Decisions: {}.",
        parts.join(", "),
        plan.in_sync,
        unmanaged_suffix(plan),
        decision_counts(plan)
    )
}

/// "2 auto, 1 review" in a fixed order.
fn decision_counts(plan: &Plan) -> String {
    use crate::vocab::Decision;
    [
        Decision::Auto,
        Decision::Deferred,
        Decision::Review,
        Decision::Observe,
        Decision::Deny,
    ]
    .iter()
    .filter_map(|d| {
        let n = plan.actions.iter().filter(|a| a.decision == *d).count();
        (n > 0).then(|| format!("{n} {}", d.as_str()))
    })
    .collect::<Vec<_>>()
    .join(", ")
}

fn unmanaged_suffix(plan: &Plan) -> String {
    if plan.unmanaged.is_empty() {
        String::new()
    } else {
        format!(", {} unmanaged", plan.unmanaged.len())
    }
}

fn render_action(out: &mut String, a: &Action, p: &Palette) {
    let (sym, col) = marker(a.action_type, p);
    let _ = writeln!(
        out,
        "{col}{sym} {}{}{reset}  {}  {}[risk {} · {} · {}]{reset}",
        p.bold,
        a.target,
        a.action_type.as_str(),
        p.dim,
        a.risk.as_str(),
        a.decision.as_str(),
        a.reasons.join("; "),
        reset = p.reset,
    );
    if let Some(note) = &a.note {
        let _ = writeln!(out, "    {}note: {note}{}", p.dim, p.reset);
    }
    for c in &a.changes {
        if is_text_change(&c.from, &c.to) {
            let _ = writeln!(out, "    {}:", c.path);
            for line in unified(&c.from, &c.to).lines() {
                let color = if line.starts_with("+++") || line.starts_with("---") {
                    p.bold
                } else if line.starts_with('+') {
                    p.green
                } else if line.starts_with('-') {
                    p.red
                } else if line.starts_with("@@") {
                    p.cyan
                } else {
                    ""
                };
                let _ = writeln!(out, "      {color}{line}{}", p.reset);
            }
        } else if c.from.is_null() {
            let _ = writeln!(out, "    {}: {}{}{}", c.path, p.green, show(&c.to), p.reset);
        } else {
            let _ = writeln!(
                out,
                "    {}: {}{}{} → {}{}{}",
                c.path,
                p.red,
                show(&c.from),
                p.reset,
                p.green,
                show(&c.to),
                p.reset
            );
        }
    }
}

pub fn render_results(results: &[ActionResult], color: bool) -> String {
    let p = Palette::new(color);
    let mut out = String::new();
    let (mut synced, mut failed, mut skipped) = (0, 0, 0);
    for r in results {
        match &r.outcome {
            Outcome::Synced { detail } => {
                synced += 1;
                let _ = writeln!(
                    out,
                    "{}✓{} {}  {}  {}({} ms){}  {detail}",
                    p.green, p.reset, r.target, r.action_type, p.dim, r.duration_ms, p.reset
                );
            }
            Outcome::Failed { error } => {
                failed += 1;
                let _ = writeln!(
                    out,
                    "{}✗{} {}  {}  {}failed{}: {error}",
                    p.red, p.reset, r.target, r.action_type, p.red, p.reset
                );
            }
            Outcome::Skipped { reason } => {
                skipped += 1;
                let _ = writeln!(
                    out,
                    "{}· {}  {}  not applied: {reason}{}",
                    p.dim, r.target, r.action_type, p.reset
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nApply: {synced} applied, {failed} failed, {skipped} not applied."
    );
    out
}

pub fn render_history(entries: &[JournalEntry]) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("The journal is empty.\n");
        return out;
    }
    for e in entries {
        let commit = e
            .commit
            .as_deref()
            .map(|c| format!(" @{}", &c[..c.len().min(12)]))
            .unwrap_or_default();
        let what = match (e.phase, &e.outcome) {
            (JournalPhase::Intent, _) => "intent ".to_string(),
            (_, Some(o)) => format!("{:<7}", o.as_str()),
            _ => "outcome".to_string(),
        };
        let detail = if e.phase == JournalPhase::Intent {
            changed_paths(&e.detail)
        } else {
            format!("  {}", e.detail)
        };
        let node = e
            .node
            .as_deref()
            .map(|n| format!("{n}  "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}  {node}run {:<4} {what} {} {}/{}{commit}  [{}]{detail}",
            crate::state::ts(e.at),
            e.run_id,
            e.action,
            e.key.kind,
            e.key.name,
            e.fingerprint
        );
    }
    out
}

/// An intent's detail holds its changes; history shows the paths.
fn changed_paths(detail: &str) -> String {
    let parsed: serde_json::Value = serde_json::from_str(detail).unwrap_or_default();
    let paths: Vec<String> = parsed
        .get("changes")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.get("path").and_then(|p| p.as_str()).map(str::to_string))
        .collect();
    let mut out = if paths.is_empty() {
        String::new()
    } else {
        format!("  changes {}", paths.join(", "))
    };
    if let Some(a) = parsed.get("approval") {
        let commit = a["commit"]
            .as_str()
            .map(|c| format!(" at commit {}", &c[..c.len().min(12)]))
            .unwrap_or_default();
        out.push_str(&format!(
            "  approved by {}{commit}",
            a["file"].as_str().unwrap_or("an approval")
        ));
    }
    out
}
