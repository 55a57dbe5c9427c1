//! `tend plan`: what tend would change, without changing it.

use super::{FormatArg, Global, SourceArgs};
use crate::publish::{Layout, Published, Publisher, Stdout};
use crate::reconcile::{self, Prepared};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    #[arg(long, value_enum, default_value_t = FormatArg::Human)]
    format: FormatArg,
    /// Exit 2 when changes are pending (0 none, 1 error).
    #[arg(long)]
    detailed_exitcode: bool,
}

pub async fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let out = Stdout {
        layout: Layout::Once(args.format.into()),
        color: global.color,
    };
    let source = args.source.source();
    let mut opts = global.options(None);
    // A pull request's desired state is its author's: its plan, posted as
    // a comment, must not read the runner's files or services for them.
    opts.untrusted = global.in_actions && crate::actions::pull_request_number().is_some();
    let prepared = Prepared::new(&source, &opts, Default::default()).await?;
    let loaded = prepared.loaded();
    let now = chrono::Utc::now();
    let store = crate::state::open_existing(&loaded.state_dir, loaded.shared.as_deref())?;
    let store = store.as_deref();
    let facts = reconcile::facts(store, &loaded.desired.settings, now)?;
    let planned = reconcile::plan(&prepared, &opts, &facts, store, now).await?;
    let mut publisher = Publisher::new();
    if global.in_actions {
        publisher = publisher.with(crate::actions::Begin);
    }
    publisher = publisher.with(out);
    if global.in_actions {
        publisher = publisher.with(crate::actions::ActionsSink { command: "plan" });
    }
    publisher
        .publish(&Published::Plan {
            plan: &planned.plan,
            secrets: &planned.secrets,
        })
        .await?;
    Ok(if args.detailed_exitcode && planned.plan.pending() > 0 {
        2
    } else {
        0
    })
}
