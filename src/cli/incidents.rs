//! `tend incidents`: the incidents in the state directory, one incident,
//! or what tend learned from them.

use super::{print, Global, HistoryFormat};
use crate::report;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Include resolved incidents.
    #[arg(long)]
    all: bool,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only this node's incidents (and those of the resources a fleet
    /// shares).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
    format: HistoryFormat,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// What tend learned: verified successes and failures of each runbook
    /// step, per cause.
    Stats {
        #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
        format: HistoryFormat,
    },
    /// One incident's full summary.
    Show {
        id: i64,
        #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
        format: HistoryFormat,
    },
}

pub fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let dir = global.state_dir()?;
    let state = global.existing_store("state database")?;
    let color = global.color;
    let text = match args.command {
        None => {
            let list = state.fleet_incidents(args.all, args.limit, args.node.as_deref())?;
            match args.format {
                HistoryFormat::Human => report::render_incidents(&list, color),
                HistoryFormat::Json => format!("{:#}\n", report::incidents_json(&list)),
            }
        }
        Some(Command::Stats { format }) => {
            let stats = state.remediation_stats()?;
            match format {
                HistoryFormat::Human => report::render_stats(&stats),
                HistoryFormat::Json => format!("{:#}\n", report::stats_json(&stats)),
            }
        }
        Some(Command::Show { id, format }) => {
            let Some(i) = state.incident(id)? else {
                anyhow::bail!("no incident #{id} in {}", dir.display());
            };
            match format {
                HistoryFormat::Human => report::render_incident(&i, color),
                HistoryFormat::Json => format!("{:#}\n", serde_json::json!(i)),
            }
        }
    };
    print(&text)?;
    Ok(0)
}
