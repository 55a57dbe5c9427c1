//! One pass of `tend watch`, as text: quiet when nothing happened.

use serde_json::json;

use super::incidents::applied_json;
use super::{render_applied, Format, PassView};
use crate::model::Invalid;
use crate::vocab::IncidentStatus;

/// How `tend watch` prints its passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFormat {
    /// A report per pass that did something.
    Human,
    /// One JSON document per pass, one per line.
    Json,
}

/// What one pass of the watcher produced.
pub enum WatchPass<'a> {
    Done {
        full: bool,
        view: PassView<'a>,
        /// Incidents the healing stage worked on.
        healed: usize,
    },
    Failed {
        error: &'a dyn std::fmt::Display,
        /// The located diagnostics, when the desired state was invalid.
        invalid: Option<&'a Invalid>,
    },
}

pub fn render_watch_pass(pass: &WatchPass<'_>, format: WatchFormat, color: bool) -> String {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match (pass, format) {
        (WatchPass::Failed { error, .. }, WatchFormat::Json) => format!(
            "{}\n",
            json!({"apiVersion": "tend.dev/v1", "kind": "WatchPass", "at": at, "error": format!("{error:#}")})
        ),
        (WatchPass::Failed { error, invalid }, WatchFormat::Human) => {
            let mut text = format!("[{at}] pass failed, nothing changed: {error}\n");
            if let Some(inv) = invalid {
                text.push_str(&crate::model::diagnostic::render(
                    &inv.diagnostics,
                    &inv.sources,
                    color,
                ));
            }
            text
        }
        (WatchPass::Done { full, view, .. }, WatchFormat::Json) => {
            let mut doc = applied_json(view);
            if let Some(m) = doc.as_object_mut() {
                m.insert("kind".into(), "WatchPass".into());
                m.insert("at".into(), at.into());
                m.insert("full".into(), (*full).into());
            }
            format!("{doc}\n")
        }
        (WatchPass::Done { full, view, healed }, WatchFormat::Human) => {
            let quiet = view.plan.actions.is_empty()
                && view
                    .incidents
                    .iter()
                    .all(|i| i.status == IncidentStatus::Escalated)
                && *healed == 0
                && view.plan.health.iter().all(|a| a.problem.is_none());
            if quiet {
                return String::new();
            }
            format!(
                "[{at}] {} pass\n{}",
                if *full { "full" } else { "healing" },
                render_applied(view, Format::Human, color)
            )
        }
    }
}
