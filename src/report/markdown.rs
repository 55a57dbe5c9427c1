//! Markdown: pull-request bodies and CI job summaries.

use std::fmt::Write as _;

use super::{human::summary_line, is_text_change, show, unified};
use crate::act::{ActionResult, Outcome};
use crate::plan::Plan;
use crate::vocab::ActionType;

fn icon(t: ActionType) -> &'static str {
    match t {
        ActionType::Create => "➕",
        ActionType::Update => "✏️",
        ActionType::Delete => "🗑️",
        ActionType::Restart => "🔄",
        ActionType::Stop => "⏹️",
        ActionType::Replace => "♻️",
        ActionType::Scale => "↕️",
        ActionType::Command => "⚙️",
    }
}

/// Escapes text for a table cell.
pub(super) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Text someone else chose (a log line in a cause, an alert's summary),
/// shown as plain text in Markdown: its Markdown and HTML metacharacters
/// escaped, `@` kept from mentioning anyone, and on one line.
pub fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '|' | '~' | '<' | '>' => {
                out.push('\\');
                out.push(c);
            }
            // A word joiner: `@name` shows as written and mentions no one.
            '@' => out.push_str("@\u{2060}"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A code span that text with backticks cannot close: its fence is longer
/// than any run of backticks in it.
pub fn code(s: &str) -> String {
    let s = s.replace(['\r', '\n'], " ");
    let fence = "`".repeat(longest_backtick_run(&s) + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

pub fn render_markdown(plan: &Plan, results: Option<&[ActionResult]>) -> String {
    let mut out = String::new();
    let pending = plan.pending();
    let _ = writeln!(
        out,
        "### tend plan: {}\n",
        if pending == 0 {
            "no changes".to_string()
        } else {
            format!(
                "{pending} change{} pending",
                if pending == 1 { "" } else { "s" }
            )
        }
    );
    let commit = plan
        .source
        .commit
        .as_deref()
        .map(|c| format!(" at `{}`", &c[..c.len().min(12)]))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "Source: `{}`{commit} · mode `{}`\n",
        cell(&plan.source.origin),
        plan.mode
    );
    if !plan.actions.is_empty() {
        out.push_str(
            "| | Resource | Action | Risk | Decision | Why |\n|---|---|---|---|---|---|\n",
        );
        for a in &plan.actions {
            let mut why = a.reasons.join("; ");
            if let Some(note) = &a.note {
                why.push_str(&format!("; {note}"));
            }
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} | **{}** | {} |",
                icon(a.action_type),
                a.target,
                a.action_type.as_str(),
                a.risk.as_str(),
                a.decision.as_str(),
                cell(&why)
            );
        }
        out.push('\n');
        out.push_str(&diff_details(plan.actions.iter()));
    }
    for pause in &plan.paused {
        let _ = writeln!(
            out,
            "**⏸️ {}** (no action on what it matches)\n",
            cell(&crate::policy::gates::pause_in_words(pause))
        );
    }
    if !plan.held.is_empty() {
        out.push_str("**Held** (a change failed verification; not applied again until the declaration changes or a human releases it):\n\n");
        for h in &plan.held {
            let _ = writeln!(out, "- ⏸️ `{}`: {}", h.target, cell(&h.in_words()));
        }
        out.push('\n');
    }
    if !plan.remedies.is_empty() || plan.health.iter().any(|a| a.unknown().next().is_some()) {
        out.push_str("**Health:**\n\n");
        for r in &plan.remedies {
            let next = cell(&r.next_in_words());
            let diagnosed = r
                .diagnosis_in_words()
                .map(|d| format!(" ({})", cell(&d)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "- ⚠️ `{}`: {}{diagnosed} → {next}",
                r.target,
                cell(&r.problem.cause)
            );
        }
        for a in &plan.health {
            for s in a.unknown() {
                let _ = writeln!(
                    out,
                    "- ❔ `{}` signal `{}` is unknown (no action): {}",
                    a.target,
                    s.reading.signal,
                    cell(&s.reading.detail)
                );
            }
        }
        out.push('\n');
    }
    if !plan.unmanaged.is_empty() {
        out.push_str("**Unmanaged** (reported only):\n\n");
        for u in &plan.unmanaged {
            let _ = writeln!(out, "- `{}`: {}", u.target, u.reason);
        }
        out.push('\n');
    }
    if let Some(results) = results {
        out.push_str("**Applied:**\n\n");
        for r in results {
            let line = match &r.outcome {
                Outcome::Synced { detail } => {
                    format!("✅ `{}` {}: {}", r.target, r.action_type, cell(detail))
                }
                Outcome::Failed { error } => format!(
                    "❌ `{}` {} failed: {}",
                    r.target,
                    r.action_type,
                    cell(error)
                ),
                Outcome::Skipped { reason } => format!(
                    "⏸️ `{}` {} not applied: {}",
                    r.target,
                    r.action_type,
                    cell(reason)
                ),
            };
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "_{}_", summary_line(plan));
    out
}

/// Each action's field changes as a folded diff.
pub(super) fn diff_details<'a>(actions: impl Iterator<Item = &'a crate::vocab::Action>) -> String {
    let mut out = String::new();
    for a in actions.filter(|a| !a.changes.is_empty()) {
        let mut diff = String::new();
        for c in &a.changes {
            if is_text_change(&c.from, &c.to) {
                let _ = writeln!(diff, "# {}", c.path);
                // A lone carriage return ends a line in Markdown: shown.
                diff.push_str(&unified(&c.from, &c.to).replace('\r', "␍"));
            } else {
                if !c.from.is_null() {
                    let _ = writeln!(diff, "- {}: {}", c.path, show(&c.from));
                }
                let _ = writeln!(diff, "+ {}: {}", c.path, show(&c.to));
            }
        }
        // Longer than any run of backticks in the diff: drifted content
        // can never close the fence and write Markdown of its own.
        let fence = "`".repeat(longest_backtick_run(&diff).max(2) + 1);
        let _ = writeln!(
            out,
            "<details><summary><code>{}</code> {}</summary>\n\n{fence}diff",
            a.target,
            a.action_type.as_str()
        );
        out.push_str(&diff);
        let _ = write!(out, "{fence}\n\n</details>\n\n");
    }
    out
}

fn longest_backtick_run(text: &str) -> usize {
    text.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}
