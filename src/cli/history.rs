//! `tend history`: the journal of intents and outcomes.

use super::{parse_since, print, Global, HistoryFormat};
use crate::report;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only entries since this time: RFC 3339 (2026-11-21T10:00:00Z) or
    /// a duration ago (30m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// At most this many entries (the newest).
    #[arg(long, default_value_t = 200)]
    limit: usize,
    /// Only what this node of a fleet wrote.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
    format: HistoryFormat,
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let state = global.existing_store("journal")?;
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let entries = state.history(since, args.limit, args.node.as_deref())?;
    print(&match args.format {
        HistoryFormat::Human => report::render_history(&entries),
        HistoryFormat::Json => format!("{:#}\n", report::history_json(&entries)),
    })?;
    Ok(0)
}
