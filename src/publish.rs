//! Publish: the one place where a decided plan, a pass's results and its
//! incidents go to the outside world.
//!
//! Each destination is a [`Sink`]: the report on standard output, GitHub
//! (pull requests and issues), GitHub Actions, metrics. Sinks are async.
//! The [`Publisher`] is called by `cli` after its pass; under `tend watch`
//! it runs off the loop ([`Publisher::spawn`]): each sink is fed through a
//! channel by a task of its own, so a slow or rate-limited peer never
//! delays a pass or a heal, and a sink that fails can never change what a
//! pass did. Rendering is `report`'s job; this module only routes. See
//! ARCHITECTURE.md.

use std::io::Write;
use std::sync::Arc;

use futures::future::BoxFuture;

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
    #[error("failed to notify: {0}")]
    Notify(String),
}

/// One destination.
pub trait Sink: Send {
    fn publish<'a>(
        &'a mut self,
        what: &'a Published<'a>,
    ) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Whether only the newest pass matters to this sink (it mirrors the
    /// state elsewhere, as GitHub does): off the loop, passes that queued
    /// up behind a slow publication are skipped, except the newest full
    /// one. A sink that reports every pass (standard output, metrics)
    /// keeps the default.
    fn newest_only(&self) -> bool {
        false
    }
}

/// A pass's result, owned, to hand to a sink running off the loop.
#[derive(Clone)]
pub enum Owned {
    Pass { applied: Arc<Applied>, full: bool },
    Failed(Arc<PassError>),
}

impl Owned {
    fn borrowed(&self) -> Published<'_> {
        match self {
            Owned::Pass { applied, full } => Published::Pass {
                applied,
                full: *full,
            },
            Owned::Failed(e) => Published::Failed(e),
        }
    }

    fn full(&self) -> bool {
        matches!(self, Owned::Pass { full: true, .. })
    }
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
    pub async fn publish(&mut self, what: &Published<'_>) -> Result<(), PublishError> {
        let mut first = None;
        for sink in &mut self.sinks {
            if let Err(e) = sink.publish(what).await {
                tracing::warn!(error = %e, "Publishing failed.");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Runs every sink off the loop, each in a task of its own fed through
    /// a channel.
    pub fn spawn(self) -> Background {
        let mut feeds = Vec::new();
        let mut tasks = Vec::new();
        for sink in self.sinks {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            feeds.push(tx);
            tasks.push(tokio::spawn(feed(sink, rx)));
        }
        Background { feeds, tasks }
    }
}

/// One sink's task: publishes what it is sent, in order; a sink that only
/// needs the newest pass skips what queued up behind a slow publication.
async fn feed(mut sink: Box<dyn Sink>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Owned>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        if sink.newest_only() {
            batch = newest(batch);
        }
        for what in batch {
            if let Err(e) = sink.publish(&what.borrowed()).await {
                tracing::warn!(error = %e, "Publishing the pass failed.");
            }
        }
    }
}

/// The newest full pass of a batch, if a later pass was not full, and the
/// newest pass: a sink that closes what is gone only after a complete
/// inventory still sees the newest one.
fn newest(mut batch: Vec<Owned>) -> Vec<Owned> {
    let Some(last) = batch.pop() else {
        return batch;
    };
    let mut out = Vec::with_capacity(2);
    if !last.full() {
        if let Some(full) = batch.into_iter().rev().find(Owned::full) {
            out.push(full);
        }
    }
    out.push(last);
    out
}

/// The sinks of `tend watch`, running off the loop.
pub struct Background {
    feeds: Vec<tokio::sync::mpsc::UnboundedSender<Owned>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Queues `what` for every sink; never waits.
    pub fn send(&self, what: Owned) {
        for feed in &self.feeds {
            let _ = feed.send(what.clone());
        }
    }

    /// Lets the sinks finish what they were sent, for at most `grace`;
    /// a sink still busy then (a peer that rate-limits) is stopped.
    pub async fn close(self, grace: std::time::Duration) {
        drop(self.feeds);
        let deadline = tokio::time::Instant::now() + grace;
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                tracing::warn!("A sink was still publishing when tend stopped; it was cut short.");
            }
        }
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
    fn publish<'a>(
        &'a mut self,
        what: &'a Published<'a>,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move { self.write(what) })
    }
}

impl Stdout {
    fn write(&self, what: &Published<'_>) -> Result<(), PublishError> {
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
