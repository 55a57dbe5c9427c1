//! `tend apply`: one pass that corrects drift as far as the mode allows,
//! under the run lock, and reports what was done.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{local_dir, FormatArg, Global, ModeArg, SourceArgs};
use crate::publish::{Layout, Published, Publisher, Stdout};
use crate::reconcile::{self, Options, Prepared, Scope};
use crate::state::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Overrides the mode in Settings for this run.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// This member's node name in a fleet (also TEND_NODE). Default: the
    /// host name.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    #[arg(long, value_enum, default_value_t = FormatArg::Human)]
    format: FormatArg,
}

pub async fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let mut opts = global.options(args.mode);
    opts.node = super::member_node(args.node.as_deref());
    let source = args.source.source();
    let loaded = reconcile::load(&source, &opts)?;
    // A review that cannot publish fails before anything changes.
    if loaded.desired.settings.review.github.is_some() && crate::review::token_from_env().is_none()
    {
        return Err(crate::review::ReviewError::NoToken.into());
    }
    let store: Arc<dyn Store> =
        crate::state::open(&loaded.state_dir, loaded.shared.as_deref())?.into();
    // Held until this returns, whatever the outcome.
    let _lock = crate::state::lock(&store, "tend apply")?;
    // In a fleet, this run is a member while it lasts: it acts on its
    // node's resources and the shared ones it holds the leases of.
    let keys: Vec<_> = loaded
        .desired
        .resources
        .iter()
        .map(|r| r.key.clone())
        .collect();
    let _member = crate::fleet::Member::join(&store, &keys, loaded.desired.settings.lease()).await;
    let sink = crate::review::GitHubSink::new(local_dir(&source));
    apply(loaded, &opts, &store, args.format, global, sink).await
}

async fn apply(
    loaded: reconcile::Loaded,
    opts: &Options,
    store: &Arc<dyn Store>,
    format: FormatArg,
    global: &Global,
    review: crate::review::GitHubSink,
) -> anyhow::Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    let prepared = Prepared::from_load(loaded, Default::default()).await?;
    let runner = crate::heal::Runner::new();
    let healing = reconcile::Healing {
        runner: &runner,
        stop: &stop,
        to_the_end: true,
    };
    let applied =
        reconcile::apply(&prepared, opts, store, "tend apply", Scope::Full, healing).await?;
    let mut publisher = Publisher::new();
    if global.in_actions {
        publisher = publisher.with(crate::actions::Begin);
    }
    publisher = publisher.with(Stdout {
        layout: Layout::Once(format.into()),
        color: global.color,
    });
    if global.in_actions {
        publisher = publisher.with(crate::actions::ActionsSink { command: "apply" });
    }
    let mut publisher = publisher
        .with(review)
        .with(crate::notify::NotifySink::default());
    publisher
        .publish(&Published::Pass {
            applied: &applied,
            full: true,
        })
        .await?;
    let escalated = applied.escalated();
    if escalated > 0 {
        eprintln!(
            "tend: {escalated} incident{} escalated: a human must act (see `tend incidents`)",
            if escalated == 1 { " is" } else { "s are" }
        );
    }
    for h in &applied.plan.held {
        eprintln!("tend: {}: {}", h.target, h.in_words());
    }
    Ok(
        if applied.failed() || escalated > 0 || !applied.plan.held.is_empty() {
            1
        } else {
            0
        },
    )
}
