//! `tend policy test` and `tend policy eval` output.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::policy::testing::{ranges, TestReport};
use crate::policy::{PolicyDecision, Verdict};

/// One line per test, grouped by file, uncovered lines, then the totals
/// (like `opa test`).
pub fn render_policy_tests(report: &TestReport) -> String {
    let mut out = String::new();
    let mut last_file = "";
    for r in &report.results {
        if r.file != last_file {
            let _ = writeln!(out, "{}:", r.file);
            last_file = &r.file;
        }
        let verdict = if r.passed { "PASS" } else { "FAIL" };
        let _ = write!(
            out,
            "  {verdict} {} ({:.1} ms)",
            r.name,
            r.micros as f64 / 1000.0
        );
        if let Some(e) = &r.error {
            let _ = write!(out, ": {e}");
        }
        out.push('\n');
    }
    for u in &report.uncovered {
        let _ = writeln!(out, "not covered: {} lines {}", u.file, ranges(&u.lines));
    }
    let total = report.results.len();
    let failed = report.failed();
    let _ = writeln!(
        out,
        "{}\n{} passed, {} failed",
        "-".repeat(40),
        total - failed,
        failed
    );
    out
}

/// The decision for one policy input, as `tend policy eval` prints it.
pub fn policy_decision_json(d: &PolicyDecision) -> Value {
    let verdict = match d.decision {
        Verdict::Auto => "auto",
        Verdict::Review => "review",
        Verdict::Deny => "deny",
    };
    json!({"decision": verdict, "reasons": d.reasons})
}
