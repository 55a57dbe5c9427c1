//! The health part of a plan, in human text.

use std::fmt::Write as _;

use super::Palette;
use crate::plan::Plan;
use crate::vocab::Status;

/// The health part of a plan: signals that are not healthy, and what tend
/// would do about each unhealthy resource. Each thing is said once: a
/// resource about to be created is one line (its health is read once it
/// exists), and signals that read unknown for the same reason (a signal
/// source that cannot be reached) are one line naming them all.
pub(super) fn render_health(out: &mut String, plan: &Plan, color: bool) {
    let p = Palette::new(color);
    let mut lines = Vec::new();
    let created: std::collections::HashSet<&crate::vocab::ResourceKey> = plan
        .actions
        .iter()
        .filter(|a| a.action_type == crate::vocab::ActionType::Create)
        .map(|a| &a.target)
        .collect();
    // Unknown readings by their reason, in the order first seen: the
    // resources and signals that read unknown for it.
    let mut unknown: Vec<(String, Vec<(&crate::vocab::ResourceKey, &str)>)> = Vec::new();
    for a in &plan.health {
        if created.contains(&a.target) {
            lines.push(format!(
                "{}· {}  not created yet; health is read once it exists{}",
                p.dim, a.target, p.reset
            ));
            continue;
        }
        for s in &a.signals {
            let since = s.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            match s.reading.status {
                Status::Healthy => {}
                Status::Unhealthy => lines.push(format!(
                    "{}✗{} {}  {} unhealthy since {since}: {}",
                    p.red, p.reset, a.target, s.reading.signal, s.reading.detail
                )),
                Status::Unknown => {
                    let why = once(&s.reading.detail);
                    let signal = (&a.target, s.reading.signal.as_str());
                    match unknown.iter_mut().find(|(w, _)| *w == why) {
                        Some((_, signals)) => signals.push(signal),
                        None => unknown.push((why, vec![signal])),
                    }
                }
            }
        }
        for slo in a.slos.iter().filter(|s| s.breached) {
            lines.push(format!(
                "{}✗{} {}  SLO {} breached since {}",
                p.red,
                p.reset,
                a.target,
                slo.name,
                slo.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
    }
    for (why, signals) in unknown {
        // One resource: its name once, then its signals; several: each
        // signal with its resource.
        let one = signals.iter().all(|(t, _)| *t == signals[0].0);
        let line = if one {
            let names: Vec<&str> = signals.iter().map(|(_, n)| *n).collect();
            format!("? {}  {} unknown: {why}", signals[0].0, names.join(", "))
        } else {
            let names: Vec<String> = signals.iter().map(|(t, n)| format!("{t} {n}")).collect();
            format!("? {} unknown: {why}", names.join(", "))
        };
        lines.push(format!(
            "{}{line} (no action on unknown signals){}",
            p.dim, p.reset
        ));
    }
    for pause in &plan.paused {
        lines.push(format!(
            "{}⏸{} {} (tend pause; no action on what it matches)",
            p.red,
            p.reset,
            crate::policy::gates::pause_in_words(pause)
        ));
    }
    for h in &plan.held {
        lines.push(format!(
            "{}⏸{} {}  {}",
            p.red,
            p.reset,
            h.target,
            h.in_words()
        ));
    }
    for r in &plan.remedies {
        let next = r.next_in_words();
        lines.push(format!(
            "{}!{} {}  {}{}{} → {next}",
            p.yellow, p.reset, r.target, p.bold, r.problem.cause, p.reset
        ));
        if let Some(d) = r.diagnosis_in_words() {
            lines.push(format!("{}    {d}{}", p.dim, p.reset));
        }
        for s in &r.skipped {
            lines.push(format!(
                "{}    skip step {} ({}): {}{}",
                p.dim,
                s.step + 1,
                s.action.as_str(),
                s.reason,
                p.reset
            ));
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(out, "{}Health{}", p.bold, p.reset);
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        out.push('\n');
    }
}

/// A reading's detail with each `; `-separated part said once (a signal
/// that combines two queries to one unreachable source).
fn once(detail: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in detail.split("; ") {
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    parts.join("; ")
}
