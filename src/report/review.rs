//! Pull request and issue texts: what tend asks a human on GitHub.
//!
//! Bodies lead with a summary table, fold the details, say how to approve,
//! and stay under [`BODY_LIMIT`] characters (GitHub refuses bodies over
//! 65,536), cutting the folded plan first and saying what was cut.

use std::fmt::Write as _;

use serde_json::Value;

use super::markdown::{cell, code, diff_details, plain};
use crate::state::{ts, Incident, ProposalRow, ReviewEvent};
use crate::vocab::{Action, ResourceKey};

/// The most characters a body tend writes may have.
pub const BODY_LIMIT: usize = 60_000;

/// Everything a pull request body says.
pub struct PullRequestView<'a> {
    pub key: &'a ResourceKey,
    /// The hidden marker, first in the body.
    pub marker: &'a str,
    pub fingerprint: &'a str,
    pub actions: &'a [&'a Action],
    /// The open incident of the resource, when a runbook step waits.
    pub incident: Option<&'a Incident>,
    pub approval_path: &'a str,
    pub expires: &'a str,
    /// The file and line that declare the resource.
    pub declared: Option<String>,
    /// The source commit the plan was made at.
    pub commit: Option<&'a str>,
    /// Whether the PR now writes the live values into Git.
    pub keep_live: bool,
    /// Whether the keep-live box is offered, and why not when it is not.
    pub keep_live_offer: Result<(), String>,
    /// In a fleet: the nodes that found this change, and those that found
    /// another change to the resource.
    pub nodes: Option<&'a Nodes>,
}

/// In a fleet, which nodes found a resource's proposed change (`same`)
/// and which found another change to it (`different`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nodes {
    pub same: Vec<String>,
    pub different: Vec<String>,
}

/// In a fleet, the line of a pull request's body that says which nodes
/// found its change (and which found another one).
pub fn nodes_line(n: &Nodes) -> String {
    let list = |nodes: &[String]| {
        nodes
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut line = format!(
        "Found on {} {}.",
        if n.same.len() == 1 { "node" } else { "nodes" },
        list(&n.same)
    );
    if !n.different.is_empty() {
        line.push_str(&format!(
            " Another change to it is pending on {}; it is proposed once this one is settled.",
            list(&n.different)
        ));
    }
    line
}

/// `body` (a pull request's, as tend wrote it) with its nodes line made
/// `n`'s: replaced, or added after the change's fingerprint line.
pub fn with_nodes_line(body: &str, n: &Nodes) -> String {
    let line = nodes_line(n);
    let mut out = Vec::new();
    let mut placed = false;
    for l in body.lines() {
        if l.starts_with("Found on node") {
            if !placed {
                out.push(line.clone());
                placed = true;
            }
            continue;
        }
        out.push(l.to_string());
        if !placed && l.starts_with("Change fingerprint `") {
            out.push(String::new());
            out.push(line.clone());
            placed = true;
        }
    }
    let mut text = out.join("\n");
    if body.ends_with('\n') {
        text.push('\n');
    }
    text
}

pub fn revert_title(key: &ResourceKey) -> String {
    format!("tend: revert {key} to its last good spec")
}

/// The body of a pull request that reverts a held resource's declaration
/// to its last good values.
pub fn revert_body(
    marker: &str,
    h: &crate::plan::Held,
    declared: &str,
    incident: Option<&Incident>,
) -> String {
    let commit = |c: &Option<String>| {
        c.as_deref()
            .map_or_else(|| "an unknown commit".to_string(), code)
    };
    let mut out = format!(
        "{marker}\n### ⏪ Revert `{}` to its last good spec\n\nThe change {} declared to `{}` failed verification: **{}**.\n\n",
        h.target,
        commit(&h.failed_commit),
        h.target,
        plain(&h.cause)
    );
    out.push_str(&format!(
        "- **Changed fields:** {}\n",
        h.fields
            .iter()
            .map(|f| code(f))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push_str(&format!("- **Declared at:** {}\n", code(declared)));
    if h.frozen {
        out.push_str(
            "- **Now:** frozen: tend changed nothing after the regression and escalated.\n",
        );
    } else {
        out.push_str(&format!(
            "- **Now:** rolled back to the last good spec of {}; the failed spec is held and not applied again.\n",
            commit(&h.good_commit)
        ));
    }
    if let Some(i) = incident {
        out.push_str(&format!(
            "\n#### Incident #{}\n\n{}",
            i.id,
            incident_summary(i)
        ));
    }
    out.push_str(&format!(
        "\nMerging this edits only the changed fields back to their last good values; the declaration then differs from the failed spec, so the hold ends. Closing it unmerged leaves the hold (release it with `tend release {}`).\n",
        h.target
    ));
    out
}

pub fn pull_request_title(key: &ResourceKey, keep_live: bool) -> String {
    if keep_live {
        format!("tend: keep the live state of {key} in Git")
    } else {
        format!("tend: review a change to {key}")
    }
}

pub fn pull_request_body(v: &PullRequestView<'_>) -> String {
    let mut head = String::new();
    let _ = writeln!(head, "{}", v.marker);
    let _ = writeln!(
        head,
        "### {} `{}` {}\n",
        if v.keep_live { "📝" } else { "🔍" },
        v.key,
        if v.keep_live {
            "drifted; this pull request writes the live values into Git"
        } else {
            "has changes that need a human"
        }
    );
    head.push_str("| Action | Risk | Decision | Reasons |\n|---|---|---|---|\n");
    for a in v.actions {
        let mut reasons = a.reasons.join("; ");
        if let Some(note) = &a.note {
            let _ = write!(reasons, "; {note}");
        }
        let _ = writeln!(
            head,
            "| {} | {} | **{}** | {} |",
            a.action_type.as_str(),
            a.risk.as_str(),
            a.decision.as_str(),
            cell(&reasons)
        );
    }
    head.push('\n');
    let commit = v
        .commit
        .map(|c| format!(" at `{}`", &c[..c.len().min(12)]))
        .unwrap_or_default();
    let _ = writeln!(
        head,
        "Change fingerprint `{}`{}{commit}.\n",
        v.fingerprint,
        v.declared
            .as_deref()
            .map(|d| format!(", declared in `{d}`"))
            .unwrap_or_default()
    );
    if let Some(n) = v.nodes {
        let _ = writeln!(head, "{}\n", nodes_line(n));
    }

    let mut tail = String::new();
    if let Some(i) = v.incident {
        let _ = writeln!(
            tail,
            "<details><summary>Incident #{} ({}): {}</summary>\n\n{}\n</details>\n",
            i.id,
            i.status.as_str(),
            plain(&i.cause),
            incident_summary(i)
        );
    }
    tail.push_str("#### How to approve\n\n");
    if v.keep_live {
        let _ = writeln!(
            tail,
            "Merging writes the live values into the declaration, so tend stops correcting them. \
             Untick the box below to go back to approving the change instead.\n"
        );
    } else {
        let _ = writeln!(
            tail,
            "Merging approves exactly this change, once: it adds `{}` (valid until {}), and \
             tend's next pass applies the change, unless a policy denies it, a safety gate holds \
             it, or the live state has changed since (then this pull request is updated instead). \
             Closing without merging declines it: tend does not propose this change again until \
             it differs. Who may merge is up to CODEOWNERS and branch protection on `approvals/`.\n",
            v.approval_path, v.expires
        );
    }
    match &v.keep_live_offer {
        Ok(()) => {
            let _ = writeln!(
                tail,
                "- [{}] {} {KEEP_LIVE_MARKER}",
                if v.keep_live { "x" } else { " " },
                crate::report::review::KEEP_LIVE_LABEL
            );
        }
        Err(why) => {
            let _ = writeln!(tail, "_Keeping the live value is not offered: {why}._");
        }
    }

    let details = diff_details(v.actions.iter().copied());
    let plan = if details.is_empty() {
        String::new()
    } else {
        format!("<details><summary>Plan</summary>\n\n{details}</details>\n\n")
    };
    fit(&head, &plan, &tail)
}

/// The box's label; `review::proposal` reads it back.
pub const KEEP_LIVE_LABEL: &str = "keep the live value in Git instead";

/// The hidden marker on the box's line: the box is read back only from
/// the last line that carries it, the one tend writes at the end of the
/// body, never from drifted content quoted in the plan above it.
pub const KEEP_LIVE_MARKER: &str = "<!-- tend:keep-live -->";

/// `head + middle + tail`, with `middle` cut (at a line) so that the whole
/// stays under [`BODY_LIMIT`], and a note saying how much was cut.
fn fit(head: &str, middle: &str, tail: &str) -> String {
    let total = head.chars().count() + middle.chars().count() + tail.chars().count();
    if total <= BODY_LIMIT {
        return format!("{head}{middle}{tail}");
    }
    let note_room = 300;
    let room = BODY_LIMIT.saturating_sub(head.chars().count() + tail.chars().count() + note_room);
    let mut kept = String::new();
    let mut lines = middle.lines();
    for line in lines.by_ref() {
        if kept.chars().count() + line.chars().count() + 1 > room {
            break;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    let cut = lines.count() + 1;
    // Close what the cut left open, so the rest of the body renders.
    if kept.matches("```").count() % 2 == 1 {
        kept.push_str("```\n");
    }
    let opened = kept.matches("<details>").count();
    let closed = kept.matches("</details>").count();
    for _ in closed..opened {
        kept.push_str("</details>\n");
    }
    let mut body = format!(
        "{head}{kept}\n> ✂️ The plan was cut here: {cut} more lines do not fit in a pull request body. `tend plan` shows all of it.\n\n{tail}"
    );
    if body.chars().count() > BODY_LIMIT {
        body = body.chars().take(BODY_LIMIT - 40).collect();
        body.push_str("\n\n> ✂️ (cut to fit)\n");
    }
    body
}

/// Any Markdown cut to fit a pull request or issue body.
pub fn fit_body(markdown: &str) -> String {
    fit("", markdown, "")
}

pub fn status_comment(marker: &str, text: &str) -> String {
    format!("{marker}\n{text}\n")
}

pub fn incident_issue_title(i: &Incident) -> String {
    format!(
        "tend: incident #{} on {}/{} needs a person: {}",
        i.id,
        i.key.kind,
        i.key.name,
        i.cause
            .replace(['\r', '\n'], " ")
            .chars()
            .take(120)
            .collect::<String>()
    )
}

pub fn incident_issue_body(marker: &str, i: &Incident) -> String {
    let text = format!(
        "{marker}\n### 🚨 `{}/{}`: {}\n\n{}",
        i.key.kind,
        i.key.name,
        plain(&i.cause),
        incident_summary(i)
    );
    fit(&text, "", "")
}

/// The incident as Markdown: resource, symptoms with values and since
/// when, probable cause, every step with its outcome and timing, current
/// state, recommended next action, timings.
pub fn incident_summary(i: &Incident) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "- **Status:** {} (severity {})",
        i.status.as_str(),
        i.severity
    );
    let _ = writeln!(out, "- **Resource:** `{}/{}`", i.key.kind, i.key.name);
    let _ = writeln!(
        out,
        "- **Probable cause:** {}{}",
        plain(&i.cause),
        i.signature
            .as_deref()
            .map(|s| format!(" (signature {})", code(s)))
            .unwrap_or_default()
    );
    if let Some(why) = &i.why {
        let _ = writeln!(out, "- **Why this cause:** {}", plain(why));
    }
    if let Some(c) = &i.change {
        let _ = writeln!(
            out,
            "- **Change:** {}",
            plain(&super::incidents::change_in_words(c))
        );
    }
    let _ = writeln!(
        out,
        "- **Runbook:** {}",
        i.runbook.as_deref().unwrap_or("none")
    );
    let _ = writeln!(
        out,
        "- **Onset:** {} · **detected:** {}",
        ts(i.onset_at),
        ts(i.detected_at)
    );
    out.push_str(
        "\n**Symptoms**\n\n| Signal | Status | Value | Since | Detail |\n|---|---|---|---|---|\n",
    );
    for s in i.symptoms.as_array().into_iter().flatten() {
        let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or("");
        let value = s
            .get("value")
            .and_then(Value::as_f64)
            .map(|v| format!("{v:.3}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {value} | {} | {} |",
            code(text("signal")),
            plain(text("status")),
            plain(text("since")),
            plain(text("detail"))
        );
    }
    out.push_str("\n**Steps**\n\n| # | Action | Decision | Outcome | Started | Took | Detail |\n|---|---|---|---|---|---|---|\n");
    for s in &i.steps {
        let n = s.step.map_or_else(|| "–".into(), |n| (n + 1).to_string());
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {} | {} | {} ms | {} |",
            s.action_word(),
            s.decision.map_or("none", crate::vocab::Decision::as_str),
            s.outcome,
            ts(s.started_at),
            s.duration_ms,
            plain(&s.detail)
        );
    }
    let _ = writeln!(out, "\n- **Current state:** {}", plain(&i.state));
    let _ = writeln!(
        out,
        "- **Recommended next action:** {}",
        plain(&i.recommendation)
    );
    if let Some(t) = i.time_to_recover_ms {
        let _ = writeln!(out, "- **Time to recover:** {:.1} s", t as f64 / 1000.0);
    }
    out
}

/// `tend review list`.
pub fn render_proposals(rows: &[ProposalRow]) -> String {
    if rows.is_empty() {
        return "No proposals: nothing waits for a human.\n".into();
    }
    let mut out = String::new();
    for r in rows {
        let pr = match (&r.number, &r.url) {
            (_, Some(url)) if !url.is_empty() => url.clone(),
            (Some(n), _) => format!("#{n}"),
            _ => "(no pull request)".into(),
        };
        let _ = writeln!(
            out,
            "{}/{}  {}  {:<9} {pr}",
            r.key.kind, r.key.name, r.fingerprint, r.state
        );
    }
    out
}

pub fn proposals_json(rows: &[ProposalRow]) -> Value {
    serde_json::json!({"apiVersion": "tend.dev/v1", "kind": "Proposals", "formatVersion": super::FORMAT_VERSION, "proposals": rows})
}

/// `tend review log`.
pub fn render_review_log(events: &[ReviewEvent]) -> String {
    if events.is_empty() {
        return "No GitHub operations yet.\n".into();
    }
    let mut out = String::new();
    for e in events {
        let number = e.number.map(|n| format!(" #{n}")).unwrap_or_default();
        let detail = if e.detail.is_empty() {
            String::new()
        } else {
            format!("  {}", e.detail)
        };
        let _ = writeln!(
            out,
            "{}  {:<6} {} {}{number}{detail}",
            ts(e.at),
            e.outcome,
            e.operation,
            e.subject
        );
    }
    out
}

pub fn review_log_json(events: &[ReviewEvent]) -> Value {
    serde_json::json!({"apiVersion": "tend.dev/v1", "kind": "ReviewLog", "formatVersion": super::FORMAT_VERSION, "entries": events})
}

/// A unified diff of one file, as `tend adopt` prints it.
pub fn render_file_diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("a/{path}"), &format!("b/{path}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (L6): text from a log line, an alert's summary or name
    /// cannot write links, images, HTML or mentions into an issue or a
    /// pull request, nor leave its code span.
    #[test]
    fn l6_foreign_text_is_plain_in_markdown() {
        let cause = "port conflict: [click here](https://evil.example) ![x](https://t.example/p.png) <img src=x> @org/admins\n# heading";
        let shown = plain(cause);
        for bad in ["[click here](", "![x](", "@org", "\n#"] {
            assert!(!shown.contains(bad), "{bad} in {shown}");
        }
        assert!(shown.contains("\\<img src=x\\>"), "{shown}");
        assert!(shown.contains("click here") && shown.contains("admins"));
        assert_eq!(code("alert/x`y"), "``alert/x`y``");
        assert_eq!(code("`edge"), "`` `edge ``");
    }

    #[test]
    fn a_body_that_is_too_long_is_cut_in_the_middle_and_says_so() {
        let middle: String = (0..20_000).map(|i| format!("+ line {i}\n")).collect();
        let middle =
            format!("<details><summary>Plan</summary>\n\n```diff\n{middle}```\n</details>\n");
        let body = fit("HEAD\n", &middle, "TAIL\n");
        assert!(body.chars().count() <= BODY_LIMIT, "{}", body.len());
        assert!(body.starts_with("HEAD\n") && body.ends_with("TAIL\n"));
        assert!(body.contains("more lines do not fit"));
        assert_eq!(body.matches("```").count() % 2, 0);
        assert_eq!(
            body.matches("<details>").count(),
            body.matches("</details>").count()
        );
    }
}
