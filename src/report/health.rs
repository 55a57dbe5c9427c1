//! The health part of a plan, in human text.

use std::fmt::Write as _;

use super::Palette;
use crate::plan::Plan;
use crate::vocab::Status;

/// The health part of a plan: signals that are not healthy, and what tend
/// would do about each unhealthy resource.
pub(super) fn render_health(out: &mut String, plan: &Plan, color: bool) {
    let p = Palette::new(color);
    let mut lines = Vec::new();
    for a in &plan.health {
        for s in &a.signals {
            let since = s.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            match s.reading.status {
                Status::Healthy => {}
                Status::Unhealthy => lines.push(format!(
                    "{}✗{} {}  {} unhealthy since {since}: {}",
                    p.red, p.reset, a.target, s.reading.signal, s.reading.detail
                )),
                Status::Unknown => lines.push(format!(
                    "{}? {}  {} unknown since {since}: {} (no action on unknown signals){}",
                    p.dim, a.target, s.reading.signal, s.reading.detail, p.reset
                )),
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
    for r in &plan.remedies {
        let next = r.next_in_words();
        lines.push(format!(
            "{}!{} {}  {}{}{} → {next}",
            p.yellow, p.reset, r.target, p.bold, r.problem.cause, p.reset
        ));
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
