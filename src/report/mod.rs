//! Rendering plans, apply results and history for humans and machines.
//!
//! Formats: human text (coloured unified diffs), JSON (stable, versioned:
//! `apiVersion: tend.dev/v1`, `formatVersion: 1`), Markdown (PR bodies,
//! job summaries) and SARIF (code scanning). Rendering is pure and must never print secrets: values of
//! secret-looking fields are redacted when the plan is made.

mod health;
mod human;
mod incidents;
mod json;
mod markdown;
mod policy;
pub mod review;
mod sarif;
mod watch;

use std::time::Duration;

use serde_json::Value;

pub use human::{render_history, render_plan};
pub use incidents::{
    incidents_json, render_applied, render_incident, render_incidents, render_stats, stats_json,
    PassView,
};
pub use json::{apply_json, history_json, plan_json, FORMAT_VERSION};
pub use markdown::render_markdown;
pub use policy::{policy_decision_json, render_policy_tests};
pub use review::{
    proposals_json, render_file_diff, render_proposals, render_review_log, review_log_json,
};
pub use sarif::plan_sarif;
pub use watch::{render_watch_pass, WatchFormat, WatchPass};

/// How long a text diff may take before it falls back to a coarser one.
const DIFF_DEADLINE: Duration = Duration::from_millis(200);

/// Output formats of `plan` and `apply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Markdown,
    /// SARIF 2.1.0, for code scanning (drift located at declarations).
    Sarif,
}

/// Terminal colours, or none.
pub(crate) struct Palette {
    pub(crate) bold: &'static str,
    pub(crate) dim: &'static str,
    pub(crate) red: &'static str,
    pub(crate) green: &'static str,
    pub(crate) yellow: &'static str,
    pub(crate) cyan: &'static str,
    pub(crate) reset: &'static str,
}

impl Palette {
    pub(crate) fn new(color: bool) -> Self {
        if color {
            Palette {
                bold: "\x1b[1m",
                dim: "\x1b[2m",
                red: "\x1b[31m",
                green: "\x1b[32m",
                yellow: "\x1b[33m",
                cyan: "\x1b[36m",
                reset: "\x1b[0m",
            }
        } else {
            Palette {
                bold: "",
                dim: "",
                red: "",
                green: "",
                yellow: "",
                cyan: "",
                reset: "",
            }
        }
    }
}

/// A value for one-line display: strings without JSON quotes when simple.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "(none)".into(),
        other => other.to_string(),
    }
}

/// Whether a change is best shown as a text diff.
fn is_text_change(from: &Value, to: &Value) -> bool {
    let multiline = |v: &Value| v.as_str().is_some_and(|s| s.contains('\n'));
    multiline(from) || multiline(to)
}

/// A unified diff of two texts (live → desired), computed with a deadline
/// so a pathological input cannot stall a plan.
fn unified(from: &Value, to: &Value) -> String {
    let old = from.as_str().unwrap_or_default();
    let new = to.as_str().unwrap_or_default();
    let diff = similar::TextDiff::configure()
        .timeout(DIFF_DEADLINE)
        .diff_lines(old, new);
    diff.unified_diff()
        .context_radius(3)
        .header("live", "desired")
        .to_string()
}

#[cfg(test)]
mod tests;
