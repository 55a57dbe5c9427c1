//! Health and incidents in every output format.
//!
//! An escalated incident is the loudest thing in any report: it means tend
//! tried every approved step and a human must act.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::human::{render_plan, render_results};
use super::Palette;
use super::{apply_json, plan_sarif, render_markdown, Format, FORMAT_VERSION};
use crate::act::ActionResult;
use crate::plan::Plan;
use crate::state::{ts, Incident, StepStats};
use crate::vocab::Decision;
use crate::vocab::IncidentStatus;

fn ms(v: i64) -> String {
    if v < 10_000 {
        format!("{v} ms")
    } else {
        format!("{:.1} s", v as f64 / 1000.0)
    }
}

/// The change an incident is attributed to, in words.
pub fn change_in_words(c: &Value) -> String {
    let fields: Vec<&str> = c
        .get("fields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "commit {} applied at {}{} changed {}; the problem appeared inside its verification window",
        c.get("commit").and_then(Value::as_str).unwrap_or("unknown"),
        c.get("appliedAt").and_then(Value::as_str).unwrap_or("?"),
        c.get("wave")
            .and_then(Value::as_u64)
            .map(|w| format!(" (wave {w})"))
            .unwrap_or_default(),
        if fields.is_empty() {
            "the resource".to_string()
        } else {
            fields.join(", ")
        }
    )
}

/// One incident as a summary: resource, symptoms, probable cause, actions
/// tried, current state, recommended next action, and the timings.
pub fn render_incident(i: &Incident, color: bool) -> String {
    let p = Palette::new(color);
    let mut out = String::new();
    let status_color = match i.status {
        IncidentStatus::Escalated => p.red,
        IncidentStatus::Open => p.yellow,
        IncidentStatus::Resolved => p.green,
    };
    let _ = writeln!(
        out,
        "{}Incident #{}{} {}{}{}  {}/{}",
        p.bold,
        i.id,
        p.reset,
        status_color,
        i.status.as_str().to_uppercase(),
        p.reset,
        i.key.kind,
        i.key.name
    );
    let _ = writeln!(out, "  resource:        {}/{}", i.key.kind, i.key.name);
    let _ = writeln!(out, "  symptoms:");
    for s in i.symptoms.as_array().into_iter().flatten() {
        let value = s
            .get("value")
            .and_then(Value::as_f64)
            .map(|v| {
                let s = format!("{v:.3}");
                format!(" = {}", s.trim_end_matches('0').trim_end_matches('.'))
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    - {} {}{value} since {}: {}",
            s.get("signal").and_then(Value::as_str).unwrap_or("?"),
            s.get("status").and_then(Value::as_str).unwrap_or("?"),
            s.get("since").and_then(Value::as_str).unwrap_or("?"),
            s.get("detail").and_then(Value::as_str).unwrap_or(""),
        );
    }
    let _ = writeln!(
        out,
        "  probable cause:  {}{}",
        i.cause,
        i.signature
            .as_deref()
            .map(|s| format!(" (signature {s})"))
            .unwrap_or_default()
    );
    if let Some(why) = &i.why {
        let _ = writeln!(out, "  why this cause:  {why}");
    }
    if let Some(c) = &i.change {
        let _ = writeln!(out, "  change:          {}", change_in_words(c));
    }
    let _ = writeln!(
        out,
        "  runbook:         {}",
        i.runbook.as_deref().unwrap_or("none")
    );
    let _ = writeln!(out, "  actions tried:");
    if i.steps.is_empty() {
        let _ = writeln!(out, "    (none yet)");
    }
    for s in &i.steps {
        let step = s
            .step
            .map(|n| format!("step {} ", n + 1))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    - {step}{} [{}] {} at {} ({}): {}",
            s.action_word(),
            s.decision.map_or("none", Decision::as_str),
            s.outcome,
            ts(s.started_at),
            ms(s.duration_ms),
            s.detail
        );
    }
    let _ = writeln!(out, "  current state:   {}", i.state);
    let _ = writeln!(out, "  next action:     {}", i.recommendation);
    let _ = writeln!(
        out,
        "  onset {}, detected {}{}",
        ts(i.onset_at),
        ts(i.detected_at),
        i.resolved_at
            .map(|r| format!(", resolved {}", ts(r)))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  time to detect {}{}",
        ms(i.time_to_detect_ms),
        i.time_to_recover_ms
            .map(|t| format!(", time to recover {}", ms(t)))
            .unwrap_or_default()
    );
    out
}

/// A list of incidents, one line each.
pub fn render_incidents(list: &[Incident], color: bool) -> String {
    let p = Palette::new(color);
    if list.is_empty() {
        return "No incidents.\n".into();
    }
    let mut out = String::new();
    for i in list {
        let _ = writeln!(
            out,
            "#{:<5} {:<9} {}{}/{}  {}  detected {}{}",
            i.id,
            i.status.as_str(),
            i.node
                .as_deref()
                .map(|n| format!("{n}: "))
                .unwrap_or_default(),
            i.key.kind,
            i.key.name,
            i.cause,
            ts(i.detected_at),
            i.time_to_recover_ms
                .map(|t| format!(", recovered in {}", ms(t)))
                .unwrap_or_default()
        );
    }
    let escalated = list
        .iter()
        .filter(|i| i.status == IncidentStatus::Escalated)
        .count();
    if escalated > 0 {
        let _ = writeln!(
            out,
            "{}{escalated} escalated: a human must act (tend incidents show ID){}",
            p.red, p.reset
        );
    }
    out
}

pub fn incidents_json(list: &[Incident]) -> Value {
    json!({
        "apiVersion": "tend.dev/v1",
        "kind": "Incidents",
        "formatVersion": FORMAT_VERSION,
        "incidents": list,
    })
}

/// What an `apply` pass did, as the report renders it.
pub struct PassView<'a> {
    pub plan: &'a Plan,
    pub results: &'a [ActionResult],
    /// Every incident the pass touched, and every one still escalated.
    pub incidents: &'a [Incident],
}

/// The JSON document of an `apply` pass: the plan, the results and the
/// incidents.
pub(super) fn applied_json(a: &PassView<'_>) -> Value {
    let mut doc = apply_json(a.plan, a.results);
    if let Some(m) = doc.as_object_mut() {
        m.insert("incidents".into(), json!(a.incidents));
        m.insert(
            "escalated".into(),
            json!(a
                .incidents
                .iter()
                .filter(|i| i.status == IncidentStatus::Escalated)
                .count()),
        );
    }
    doc
}

/// What `apply` prints, in the chosen format.
pub fn render_applied(a: &PassView<'_>, format: Format, color: bool) -> String {
    match format {
        Format::Human => {
            let mut text = render_plan(a.plan, color);
            if !a.results.is_empty() {
                text.push('\n');
                text.push_str(&render_results(a.results, color));
            }
            for i in a.incidents {
                text.push('\n');
                text.push_str(&render_incident(i, color));
            }
            text
        }
        Format::Json => format!("{:#}\n", applied_json(a)),
        Format::Markdown => {
            let mut text = String::new();
            let escalated: Vec<&Incident> = a
                .incidents
                .iter()
                .filter(|i| i.status == IncidentStatus::Escalated)
                .collect();
            if !escalated.is_empty() {
                let _ = writeln!(
                    text,
                    "> [!CAUTION]\n> {} incident{} escalated: tend tried every approved step and a human must act.\n",
                    escalated.len(),
                    if escalated.len() == 1 { "" } else { "s" }
                );
            }
            text.push_str(&render_markdown(a.plan, Some(a.results)));
            if !a.incidents.is_empty() {
                text.push_str("\n#### Incidents\n\n");
                for i in a.incidents {
                    let _ = writeln!(text, "```text\n{}```\n", render_incident(i, false));
                }
            }
            text
        }
        Format::Sarif => format!("{:#}\n", plan_sarif(a.plan)),
    }
}

/// What tend learned, as JSON.
pub fn stats_json(stats: &[StepStats]) -> Value {
    json!({"apiVersion": "tend.dev/v1", "kind": "RemediationStats", "formatVersion": FORMAT_VERSION, "steps": stats})
}

/// What tend learned from verified outcomes, one line per runbook step.
pub fn render_stats(stats: &[StepStats]) -> String {
    if stats.is_empty() {
        return "No runbook step has been verified yet.\n".into();
    }
    let mut out = String::from(
        "cause / runbook / step: verified successes, failures (consecutive failures)\n",
    );
    for s in stats {
        let _ = writeln!(
            out,
            "{} / {} / step {} ({}): {} succeeded, {} failed ({} in a row)",
            s.cause,
            s.runbook,
            s.step + 1,
            s.action,
            s.successes,
            s.failures,
            s.consecutive_failures
        );
    }
    out
}
