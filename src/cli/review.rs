//! `tend review`: the proposals tend opened for a human, and the log of
//! every GitHub operation.

use super::{print, Global, HistoryFormat};
use crate::report;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The resources waiting for review: fingerprint, state, pull request.
    List {
        #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
        format: HistoryFormat,
    },
    /// Every operation tend made on GitHub, oldest first.
    Log {
        /// At most this many (the newest).
        #[arg(long, default_value_t = 200)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
        format: HistoryFormat,
    },
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let state = global.existing_store("state database")?;
    let text = match args.command {
        Command::List { format } => {
            let rows = state.proposals()?;
            match format {
                HistoryFormat::Human => report::render_proposals(&rows),
                HistoryFormat::Json => format!("{:#}\n", report::proposals_json(&rows)),
            }
        }
        Command::Log { limit, format } => {
            let events = state.review_log(limit)?;
            match format {
                HistoryFormat::Human => report::render_review_log(&events),
                HistoryFormat::Json => format!("{:#}\n", report::review_log_json(&events)),
            }
        }
    };
    print(&text)?;
    Ok(0)
}
