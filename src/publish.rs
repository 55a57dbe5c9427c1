//! Publish: the one place where a decided plan, a pass's results and its
//! incidents go to the outside world.
//!
//! Each destination is a [`Sink`]; today the report on standard output,
//! next pull requests, issues and notifications. The [`Publisher`] is
//! called by `cli` and `watch` after a pass, never from inside the loop, so
//! a sink that fails can never change what a pass did. Rendering is
//! `report`'s job; this module only routes. See ARCHITECTURE.md.

use std::io::Write;

use crate::plan::Plan;
use crate::reconcile::{Applied, PassError};
use crate::report::{self, Format, PassView, WatchFormat, WatchPass};
use crate::vocab::Secrets;

/// What a pass has to say.
pub enum Published<'a> {
    /// `tend plan`: a decided plan; nothing was applied.
    Plan {
        plan: &'a Plan,
        secrets: &'a Secrets,
    },
    /// An `apply` pass, or one pass of `tend watch`.
    Pass { applied: &'a Applied, full: bool },
    /// A watch pass that failed before anything changed.
    Failed(&'a PassError),
}

impl Published<'_> {
    /// Every secret value the pass knows of.
    pub fn secrets(&self) -> Option<&Secrets> {
        match self {
            Published::Plan { secrets, .. } => Some(secrets),
            Published::Pass { applied, .. } => Some(&applied.secrets),
            Published::Failed(_) => None,
        }
    }

    /// `text` without any secret value the pass knows of: the last line of
    /// defence for everything a sink sends out.
    pub fn scrub(&self, text: String) -> String {
        let secrets = match self {
            Published::Plan { secrets, .. } => secrets,
            Published::Pass { applied, .. } => &applied.secrets,
            Published::Failed(_) => return text,
        };
        if secrets.is_empty() {
            text
        } else {
            secrets.scrub(&text)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("failed to write the report: {0}")]
    Write(#[source] std::io::Error),
    #[error("failed to publish to GitHub: {0}")]
    Review(String),
}

/// One destination.
pub trait Sink: Send {
    fn publish(&mut self, what: &Published<'_>) -> Result<(), PublishError>;
}

/// Every destination of a run, in order.
#[derive(Default)]
pub struct Publisher {
    sinks: Vec<Box<dyn Sink>>,
}

impl Publisher {
    pub fn new() -> Publisher {
        Publisher::default()
    }

    pub fn with(mut self, sink: impl Sink + 'static) -> Publisher {
        self.sinks.push(Box::new(sink));
        self
    }

    /// Hands `what` to every sink. A sink that fails does not keep the
    /// others from publishing; the first error is returned.
    pub fn publish(&mut self, what: &Published<'_>) -> Result<(), PublishError> {
        let mut first = None;
        for sink in &mut self.sinks {
            if let Err(e) = sink.publish(what) {
                tracing::warn!(error = %e, "Publishing failed.");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// How the report on standard output is laid out.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    /// `plan` and `apply`: one report in the chosen format.
    Once(Format),
    /// `tend watch`: one report per pass.
    Watch(WatchFormat),
}

/// The report, written to standard output.
pub struct Stdout {
    pub layout: Layout,
    pub color: bool,
}

impl Sink for Stdout {
    fn publish(&mut self, what: &Published<'_>) -> Result<(), PublishError> {
        let text = match (what, self.layout) {
            (Published::Plan { plan, .. }, Layout::Once(format)) => {
                render_plan(plan, format, self.color)
            }
            (Published::Pass { applied, .. }, Layout::Once(format)) => {
                report::render_applied(&view(applied), format, self.color)
            }
            (Published::Pass { applied, full }, Layout::Watch(format)) => {
                report::render_watch_pass(
                    &WatchPass::Done {
                        full: *full,
                        view: view(applied),
                        healed: applied.healed.len(),
                    },
                    format,
                    self.color,
                )
            }
            (Published::Failed(error), Layout::Watch(format)) => report::render_watch_pass(
                &WatchPass::Failed {
                    error,
                    invalid: match error {
                        PassError::Invalid(inv) => Some(inv),
                        _ => None,
                    },
                },
                format,
                self.color,
            ),
            // A failed `plan` or `apply` is reported by the CLI as an error.
            (Published::Failed(_), Layout::Once(_)) => String::new(),
            (Published::Plan { plan, .. }, Layout::Watch(_)) => {
                render_plan(plan, Format::Human, self.color)
            }
        };
        write_stdout(&what.scrub(text))
    }
}

fn view(a: &Applied) -> PassView<'_> {
    PassView {
        plan: &a.plan,
        results: &a.results,
        incidents: &a.incidents,
    }
}

fn render_plan(plan: &Plan, format: Format, color: bool) -> String {
    match format {
        Format::Human => report::render_plan(plan, color),
        Format::Json => format!("{:#}\n", report::plan_json(plan)),
        Format::Markdown => report::render_markdown(plan, None),
        Format::Sarif => format!("{:#}\n", report::plan_sarif(plan)),
    }
}

/// Writes to standard output; a closed pipe (`tend plan | head`) is not
/// an error worth reporting.
pub fn write_stdout(text: &str) -> Result<(), PublishError> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(PublishError::Write),
    }
}
