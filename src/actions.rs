//! GitHub Actions: what tend does differently when it runs in a workflow
//! (`GITHUB_ACTIONS=true`, or `--github`).
//!
//! It registers every secret it knows with `::add-mask::` before printing
//! anything, appends its Markdown report to `$GITHUB_STEP_SUMMARY`, writes
//! its outputs to `$GITHUB_OUTPUT`, annotates invalid documents
//! (`::error file=…,line=…,col=…::`) and drifted declarations
//! (`::warning file=…,line=…::`) with paths relative to the workspace,
//! groups the long report, and on a `pull_request` event keeps one plan
//! comment on the pull request, edited in place. The action in `action/`
//! stays thin; the behaviour lives here. Workflow commands are encoded as
//! GitHub documents them, so no message can inject a command of its own.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::model::Diagnostic;
use crate::plan::Plan;
use futures::future::BoxFuture;

use crate::publish::{PublishError, Published, Sink};
use crate::report::{self, Format, PassView};
use crate::vocab::{Decision, IncidentStatus, Secrets};

/// The hidden marker of tend's one plan comment on a pull request.
pub const PLAN_MARKER: &str = "<!-- tend:plan -->";

/// Whether tend runs in GitHub Actions.
pub fn detected(flag: bool) -> bool {
    flag || std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// A workflow command's message: `%`, CR and LF escaped.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A workflow command's property value: also `:` and `,`.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// One workflow command line: `::name k=v,k=v::message`.
pub fn command(name: &str, props: &[(&str, String)], message: &str) -> String {
    let props: Vec<String> = props
        .iter()
        .map(|(k, v)| format!("{k}={}", escape_property(v)))
        .collect();
    let sep = if props.is_empty() { "" } else { " " };
    format!(
        "::{name}{sep}{}::{}\n",
        props.join(","),
        escape_data(message)
    )
}

/// A path as the workflow's annotations want it: relative to
/// `$GITHUB_WORKSPACE` when it is inside it.
pub fn workspace_path(file: &str) -> String {
    let path = Path::new(file);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let workspace = std::env::var_os("GITHUB_WORKSPACE").map(PathBuf::from);
    let rel = workspace
        .as_ref()
        .and_then(|w| {
            let w = std::fs::canonicalize(w).unwrap_or_else(|_| w.clone());
            let a = std::fs::canonicalize(&absolute).unwrap_or_else(|_| absolute.clone());
            a.strip_prefix(&w).ok().map(Path::to_path_buf)
        })
        .unwrap_or_else(|| path.to_path_buf());
    rel.to_string_lossy().trim_start_matches("./").to_string()
}

/// `::add-mask::` for every secret value, printed before anything else.
/// The runner masks line by line, so a value of several lines is also
/// registered line by line.
pub fn mask(secrets: &Secrets) -> String {
    let mut out = String::new();
    for v in secrets.values() {
        out.push_str(&command("add-mask", &[], v));
        if v.contains('\n') {
            for line in v.lines().filter(|l| l.trim().len() >= 4) {
                out.push_str(&command("add-mask", &[], line));
            }
        }
    }
    out
}

/// The token that stops the runner from reading workflow commands in the
/// report (a drifted file's content could hold `::error::` or worse),
/// drawn once per run.
fn stop_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| format!("tend-{:016x}", rand::random::<u64>()))
}

/// `::error` annotations for invalid documents.
pub fn error_annotations(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| {
            let mut props = vec![("file", workspace_path(&d.file))];
            if let Some(p) = d.pos {
                props.push(("line", p.line.to_string()));
                props.push(("col", p.col.to_string()));
            }
            let mut message = d.message.clone();
            if let Some(h) = &d.help {
                message.push_str(&format!("\n{h}"));
            }
            command("error", &props, &message)
        })
        .collect()
}

/// `::warning` annotations at the declaration of every drifted resource.
pub fn drift_annotations(plan: &Plan) -> String {
    plan.actions
        .iter()
        .filter_map(|a| {
            let at = a.declared_at.as_ref()?;
            let message = format!(
                "{} {}: {} ({})",
                a.target,
                a.action_type.as_str(),
                a.decision.as_str(),
                a.reasons.join("; ")
            );
            Some(command(
                "warning",
                &[
                    ("file", workspace_path(&at.file)),
                    ("line", at.line.to_string()),
                    ("title", format!("tend: {} drifted", a.target)),
                ],
                &message,
            ))
        })
        .collect()
}

/// The step outputs of a pass. `failed` (actions that failed) tells a
/// failure apart from an escalation, which both exit 1.
pub fn outputs(
    plan: &Plan,
    escalated: usize,
    failed: usize,
    plan_json: &Path,
    sarif: &Path,
) -> String {
    let review = plan
        .actions
        .iter()
        .filter(|a| a.decision == Decision::Review)
        .count();
    format!(
        "changes={}\nreview={review}\nescalated={escalated}\nfailed={failed}\nplan-json={}\nsarif-file={}\n",
        plan.pending(),
        plan_json.display(),
        sarif.display()
    )
}

fn append(path: &Path, text: &str) -> Result<(), PublishError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(PublishError::Write)?;
    f.write_all(text.as_bytes()).map_err(PublishError::Write)
}

/// The sink that goes first in a workflow: masks every secret the pass
/// knows of, then opens the group the report is printed in.
pub struct Begin;

impl Sink for Begin {
    fn publish<'a>(
        &'a mut self,
        what: &'a Published<'a>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        let mut text = what.secrets().map(mask).unwrap_or_default();
        text.push_str("::group::tend report\n");
        text.push_str(&format!("::stop-commands::{}\n", stop_token()));
        Box::pin(std::future::ready(crate::publish::write_stdout(&text)))
    }
}

/// The sink that speaks to the workflow, after the report.
pub struct ActionsSink {
    /// Which command runs: `plan` posts its plan on a pull request.
    pub command: &'static str,
}

impl Sink for ActionsSink {
    fn publish<'a>(
        &'a mut self,
        what: &'a Published<'a>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.speak(what))
    }
}

impl ActionsSink {
    async fn speak(&self, what: &Published<'_>) -> Result<(), PublishError> {
        let (plan, results, incidents): (
            &Plan,
            &[crate::act::ActionResult],
            &[crate::state::Incident],
        ) = match what {
            Published::Plan { plan, .. } => (plan, &[], &[]),
            Published::Pass { applied, .. } => {
                (&applied.plan, &applied.results, &applied.incidents)
            }
            Published::Failed(_) => return Ok(()),
        };
        crate::publish::write_stdout(&format!("\n::{}::\n::endgroup::\n", stop_token()))?;
        let escalated = incidents
            .iter()
            .filter(|i| i.status == IncidentStatus::Escalated)
            .count();
        let view = PassView {
            plan,
            results,
            incidents,
        };
        let markdown = what.scrub(match what {
            Published::Plan { .. } => report::render_markdown(plan, None),
            _ => report::render_applied(&view, Format::Markdown, false),
        });
        if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY") {
            append(Path::new(&summary), &format!("{markdown}\n"))?;
        }
        let dir = std::env::var_os("RUNNER_TEMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let plan_json = dir.join("tend-plan.json");
        let sarif = dir.join("tend.sarif");
        let json_text = match what {
            Published::Plan { .. } => format!("{:#}\n", report::plan_json(plan)),
            _ => report::render_applied(&view, Format::Json, false),
        };
        std::fs::write(&plan_json, what.scrub(json_text)).map_err(PublishError::Write)?;
        std::fs::write(
            &sarif,
            what.scrub(format!("{:#}\n", report::plan_sarif(plan))),
        )
        .map_err(PublishError::Write)?;
        if let Some(out) = std::env::var_os("GITHUB_OUTPUT") {
            append(
                Path::new(&out),
                &outputs(
                    plan,
                    escalated,
                    results.iter().filter(|r| r.outcome.failed()).count(),
                    &plan_json,
                    &sarif,
                ),
            )?;
        }
        crate::publish::write_stdout(&what.scrub(drift_annotations(plan)))?;
        if self.command == "plan" {
            if let Some(pr) = pull_request_number() {
                // The plan itself is what the job is for: a comment GitHub
                // refuses (a fork's read-only token) is a warning.
                if let Err(e) = plan_comment(pr, &markdown).await {
                    let text = format!(
                        "could not comment the plan on pull request #{pr}: {}",
                        what.scrub(e.to_string())
                    );
                    tracing::warn!("{text}");
                    crate::publish::write_stdout(&command(
                        "warning",
                        &[("title", "tend".to_string())],
                        &text,
                    ))?;
                }
            }
        }
        Ok(())
    }
}

/// The pull request of a `pull_request` (or `pull_request_target`) event.
pub fn pull_request_number() -> Option<i64> {
    let event = std::env::var("GITHUB_EVENT_NAME").ok()?;
    if !event.starts_with("pull_request") {
        return None;
    }
    let path = std::env::var_os("GITHUB_EVENT_PATH")?;
    let payload: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    payload["pull_request"]["number"]
        .as_i64()
        .or_else(|| payload["number"].as_i64())
}

/// Creates or edits tend's one plan comment on pull request `number`.
async fn plan_comment(number: i64, markdown: &str) -> Result<(), crate::review::ReviewError> {
    use crate::review::github::Client;
    let repository = std::env::var("GITHUB_REPOSITORY").unwrap_or_default();
    let api = std::env::var("GITHUB_API_URL").unwrap_or_else(|_| "https://api.github.com".into());
    let token = crate::review::token_from_env().ok_or(crate::review::ReviewError::NoToken)?;
    let client = Client::new(&api, &repository, &token)?;
    let body = format!(
        "{PLAN_MARKER}\n{}",
        crate::report::review::fit_body(markdown)
    );
    let kept = client.kept_comment(number, PLAN_MARKER, &body).await?;
    if let Some((op, method, path)) = kept.write() {
        client
            .call(op.as_str(), method, path, Some(&json!({"body": body})))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflow_commands_are_encoded_as_github_documents() {
        assert_eq!(escape_data("50% done\r\nnext"), "50%25 done%0D%0Anext");
        assert_eq!(escape_property("a:b,c%d\ne"), "a%3Ab%2Cc%25d%0Ae");
        assert_eq!(
            command(
                "error",
                &[("file", "dir,x/a:b.yaml".into()), ("line", "3".into())],
                "bad: value\n::set-output name=x::y"
            ),
            "::error file=dir%2Cx/a%3Ab.yaml,line=3::bad: value%0A::set-output name=x::y\n"
        );
        assert_eq!(command("add-mask", &[], "s3cr%t"), "::add-mask::s3cr%25t\n");
    }

    #[test]
    fn a_message_cannot_start_a_command_of_its_own() {
        let line = command("warning", &[], "x\n::add-mask::nothing");
        assert_eq!(line.matches('\n').count(), 1, "{line}");
    }
}
