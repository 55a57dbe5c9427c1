//! `tend watch`: the arguments of the loop, checked, and the loop
//! ([`crate::watch`]) run until stopped.

use super::{local_dir, parse_duration, Global, HistoryFormat, ModeArg, SourceArgs};
use crate::publish::{Layout, Publisher, Stdout};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Time between full reconciles (fetch, validate, diff, act, heal).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    interval: std::time::Duration,
    /// Time between healing passes (health of watched resources only).
    /// Default: the interval.
    #[arg(long, value_parser = parse_duration)]
    heal_interval: Option<std::time::Duration>,
    /// Share of each wait that is randomised, so many watchers do not
    /// act in lockstep.
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Stop after this many passes (0: run until stopped).
    #[arg(long, default_value_t = 0)]
    max_passes: u64,
    /// Overrides the mode in Settings.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// This member's node name in a fleet (also TEND_NODE). Default: the
    /// host name.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Serve GET /metrics (tend's own metrics), /healthz and /readyz on
    /// this address (e.g. 127.0.0.1:9464). Off unless given.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// human: a report per pass that did something; json: one JSON
    /// document per pass, one per line.
    #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
    format: HistoryFormat,
}

pub async fn run(args: Args, global: &Global) -> anyhow::Result<u8> {
    let Args {
        source,
        interval,
        heal_interval,
        jitter,
        max_passes,
        mode,
        node,
        listen,
        format,
    } = args;
    if !(0.0..=0.5).contains(&jitter) {
        anyhow::bail!("--jitter must be between 0 and 0.5, got {jitter}");
    }
    if interval.is_zero() {
        anyhow::bail!("--interval must be greater than zero");
    }
    let wo = crate::watch::WatchOptions {
        interval,
        heal_interval: heal_interval.unwrap_or(interval),
        jitter,
        max_passes,
        listen,
    };
    let source = source.source();
    let publisher = Publisher::new()
        .with(Stdout {
            layout: Layout::Watch(format.into()),
            color: global.color,
        })
        .with(crate::review::GitHubSink::new(local_dir(&source)))
        .with(crate::notify::NotifySink::default());
    let mut opts = global.options(mode);
    opts.node = super::member_node(node.as_deref());
    crate::watch::run(&source, &opts, &wo, publisher).await?;
    Ok(0)
}
