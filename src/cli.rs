//! The command line: parsing, running a command, exit codes.
//!
//! This is the only place errors become text (`tend: <what failed>: <why>`)
//! and exit codes: 0 success or nothing to do, 1 error, 2 changes pending
//! (with `--detailed-exitcode`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::{self, Mode};
use crate::publish::{Layout, Published, Publisher, Stdout};
use crate::reconcile::{self, Options, PassError, Prepared, Scope};
use crate::report::{self, Format, WatchFormat};
use crate::source::Source;

#[derive(Debug, Parser)]
#[command(
    name = "tend",
    version,
    about = "Keeps infrastructure in its declared state and heals known failures.",
    long_about = None
)]
struct Cli {
    /// Where tend keeps its journal, lock, Git cache and host records.
    /// Default: Settings spec.stateDir, else .tend in the working directory.
    #[arg(long, global = true, env = "TEND_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// When to colour output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,

    /// Speak to GitHub Actions: step summary, outputs, annotations, masks
    /// (on by default when GITHUB_ACTIONS=true).
    #[arg(long, global = true)]
    github: bool,

    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ModeArg {
    Observe,
    Recommend,
    Auto,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Observe => Mode::Observe,
            ModeArg::Recommend => Mode::Recommend,
            ModeArg::Auto => Mode::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum HistoryFormat {
    Human,
    Json,
}

impl From<HistoryFormat> for WatchFormat {
    fn from(f: HistoryFormat) -> WatchFormat {
        match f {
            HistoryFormat::Human => WatchFormat::Human,
            HistoryFormat::Json => WatchFormat::Json,
        }
    }
}

/// Output formats of `plan` and `apply`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    Human,
    Json,
    Markdown,
    /// SARIF 2.1.0, for code scanning (drift located at declarations).
    Sarif,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Human => Format::Human,
            FormatArg::Json => Format::Json,
            FormatArg::Markdown => Format::Markdown,
            FormatArg::Sarif => Format::Sarif,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check desired state against the schemas; change nothing.
    Validate {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Show what tend would change, without changing it.
    Plan {
        #[command(flatten)]
        source: SourceArgs,
        #[arg(long, value_enum, default_value_t = FormatArg::Human)]
        format: FormatArg,
        /// Exit 2 when changes are pending (0 none, 1 error).
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Correct drift as far as the mode allows, and report what was done.
    Apply {
        #[command(flatten)]
        source: SourceArgs,
        /// Overrides the mode in Settings for this run.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        #[arg(long, value_enum, default_value_t = FormatArg::Human)]
        format: FormatArg,
    },
    /// Reconcile and heal in a loop until SIGINT/SIGTERM.
    Watch {
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
        /// Serve GET /metrics (tend's own metrics), /healthz and /readyz on
        /// this address (e.g. 127.0.0.1:9464). Off unless given.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// human: a report per pass that did something; json: one JSON
        /// document per pass, one per line.
        #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
        format: HistoryFormat,
    },
    /// List incidents (unresolved ones unless --all), or show one.
    Incidents {
        #[command(subcommand)]
        command: Option<IncidentsCommand>,
        /// Include resolved incidents.
        #[arg(long)]
        all: bool,
        /// At most this many (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
        format: HistoryFormat,
    },
    /// Print the journal of intents and outcomes.
    History {
        /// Only entries since this time: RFC 3339 (2026-11-21T10:00:00Z) or
        /// a duration ago (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// At most this many entries (the newest).
        #[arg(long, default_value_t = 200)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = HistoryFormat::Human)]
        format: HistoryFormat,
    },
    /// Pull requests and issues tend opened for a human: the open
    /// proposals, and the log of every GitHub operation.
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// Write a resource's live values into its declaration, in place
    /// (every other line of the file unchanged): the local form of a pull
    /// request's "keep the live value in Git" box. Prints a unified diff.
    Adopt {
        /// The resource, as KIND/NAME (e.g. host.File/motd).
        resource: String,
        /// The desired-state directory. Default: the working directory.
        dir: Option<PathBuf>,
        /// Change the file instead of only printing the diff.
        #[arg(long)]
        write: bool,
    },
    /// Test and debug Rego policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run the sample HTTP workload (used by examples/desired-state).
    SampleApp(crate::sample::SampleArgs),
}

#[derive(Debug, Subcommand)]
enum ReviewCommand {
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

#[derive(Debug, Subcommand)]
enum IncidentsCommand {
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

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration `{s}`: {e}"))
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Run every test_* rule (like `opa test`). Without DIR, the default
    /// pack's own tests; with DIR, the tests in DIR against the default pack
    /// plus DIR's policies.
    Test {
        /// A directory of *.rego files.
        dir: Option<PathBuf>,
        /// List policy lines no test reached.
        #[arg(long)]
        coverage: bool,
    },
    /// Print the decision for one policy input (a JSON file, `-` for stdin).
    Eval {
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// A directory of *.rego files to add to the default pack.
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct SourceArgs {
    /// A local directory of desired state. Default: the working directory.
    #[arg(value_name = "DIR", conflicts_with = "repo")]
    dir: Option<PathBuf>,
    /// A Git repository URL to fetch desired state from.
    #[arg(long, value_name = "URL")]
    repo: Option<String>,
    /// Branch, tag or commit of --repo. Default: the remote's HEAD.
    #[arg(long = "ref", value_name = "REF", requires = "repo")]
    reference: Option<String>,
    /// Sub-directory of --repo that holds desired state.
    #[arg(long, value_name = "SUB", requires = "repo")]
    path: Option<String>,
}

impl SourceArgs {
    fn source(&self) -> Source {
        match &self.repo {
            Some(url) => Source::Git {
                url: url.clone(),
                reference: self.reference.clone(),
                path: self.path.clone(),
            },
            None => Source::Dir(self.dir.clone().unwrap_or_else(|| PathBuf::from("."))),
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let color = match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tend: failed to start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let in_actions = crate::actions::detected(cli.github);
    match runtime.block_on(run(cli, color)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if let Some(PassError::Invalid(invalid)) = err.downcast_ref::<PassError>() {
                if in_actions {
                    let _ = crate::publish::write_stdout(&crate::actions::error_annotations(
                        &invalid.diagnostics,
                    ));
                }
                let color_err =
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                eprint!(
                    "{}",
                    model::diagnostic::render(&invalid.diagnostics, &invalid.sources, color_err)
                );
            }
            eprintln!("tend: {}", error_text(&err));
            if in_actions {
                let _ = crate::publish::write_stdout(&crate::actions::command(
                    "error",
                    &[("title", "tend".to_string())],
                    &error_text(&err),
                ));
            }
            ExitCode::from(1)
        }
    }
}

/// An error and its causes on one line, each cause said once: a cause
/// whose text the message already carries is not repeated.
fn error_text(err: &anyhow::Error) -> String {
    crate::vocab::causes(err.as_ref())
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TEND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn print(text: &str) -> anyhow::Result<()> {
    Ok(crate::publish::write_stdout(text)?)
}

async fn run(cli: Cli, color: bool) -> anyhow::Result<u8> {
    let opts = |mode: Option<ModeArg>| Options {
        state_dir: cli.state_dir.clone(),
        mode: mode.map(Mode::from),
    };
    let in_actions = crate::actions::detected(cli.github);
    match &cli.command {
        Command::Validate { source } => validate(&source.source(), &opts(None)),
        Command::Plan {
            source,
            format,
            detailed_exitcode,
        } => {
            let out = Stdout {
                layout: Layout::Once((*format).into()),
                color,
            };
            plan(
                &source.source(),
                &opts(None),
                out,
                *detailed_exitcode,
                in_actions,
            )
            .await
        }
        Command::Apply {
            source,
            mode,
            format,
        } => {
            let opts = opts(*mode);
            let source = source.source();
            let loaded = reconcile::load(&source, &opts)?;
            // A review that cannot publish fails before anything changes.
            if loaded.desired.settings.review.github.is_some()
                && crate::review::token_from_env().is_none()
            {
                return Err(crate::review::ReviewError::NoToken.into());
            }
            let store: std::sync::Arc<dyn crate::state::Store> =
                crate::state::open(&loaded.state_dir)?.into();
            // Held until this arm ends, whatever the outcome.
            let _lock = crate::state::lock(&store, "tend apply")?;
            let sink = crate::review::GitHubSink::new(local_dir(&source));
            let report = Report {
                format: (*format).into(),
                color,
                in_actions,
            };
            apply(loaded, &opts, &store, report, sink).await
        }
        Command::Watch {
            source,
            interval,
            heal_interval,
            jitter,
            max_passes,
            mode,
            listen,
            format,
        } => {
            if !(0.0..=0.5).contains(jitter) {
                anyhow::bail!("--jitter must be between 0 and 0.5, got {jitter}");
            }
            if interval.is_zero() {
                anyhow::bail!("--interval must be greater than zero");
            }
            let wo = crate::watch::WatchOptions {
                interval: *interval,
                heal_interval: heal_interval.unwrap_or(*interval),
                jitter: *jitter,
                max_passes: *max_passes,
                listen: *listen,
            };
            let source = source.source();
            let publisher = Publisher::new()
                .with(Stdout {
                    layout: Layout::Watch((*format).into()),
                    color,
                })
                .with(crate::review::GitHubSink::new(local_dir(&source)));
            crate::watch::run(&source, &opts(*mode), &wo, publisher).await?;
            Ok(0)
        }
        Command::Incidents {
            command,
            all,
            limit,
            format,
        } => {
            let dir = reconcile::bootstrap_state_dir(&opts(None))?;
            incidents(&dir, command.as_ref(), *all, *limit, *format, color)
        }
        Command::History {
            since,
            limit,
            format,
        } => {
            let dir = reconcile::bootstrap_state_dir(&opts(None))?;
            history(&dir, since.as_deref(), *limit, *format)
        }
        Command::Review { command } => {
            let dir = reconcile::bootstrap_state_dir(&opts(None))?;
            review_command(&dir, command)
        }
        Command::Adopt {
            resource,
            dir,
            write,
        } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from("."));
            adopt(resource, &dir, &opts(None), *write).await
        }
        Command::Policy { command } => policy_command(command),
        Command::SampleApp(args) => {
            crate::sample::run(args.clone()).await?;
            Ok(0)
        }
    }
}

fn validate(source: &Source, opts: &Options) -> anyhow::Result<u8> {
    let loaded = reconcile::load(source, opts)?;
    reconcile::compile_policies(&loaded.policy_files)?;
    let desired = &loaded.desired;
    for w in model::health::noise_warnings(&desired.resources, &desired.signatures) {
        eprintln!(
            "warning: {}\n  --> {}:{}:{} (at {})",
            w.message, w.origin.file, w.origin.line, w.origin.col, w.pointer
        );
    }
    let commit = loaded
        .commit
        .as_deref()
        .map(|c| format!(" at commit {c}"))
        .unwrap_or_default();
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    print(&format!(
        "{} valid: {} document{} in {} file{}{commit}.\n",
        loaded.origin,
        loaded.desired.documents,
        plural(loaded.desired.documents),
        loaded.desired.files,
        plural(loaded.desired.files),
    ))?;
    Ok(0)
}

async fn plan(
    source: &Source,
    opts: &Options,
    out: Stdout,
    detailed_exitcode: bool,
    in_actions: bool,
) -> anyhow::Result<u8> {
    let prepared = Prepared::new(source, opts, Default::default()).await?;
    let loaded = prepared.loaded();
    let now = chrono::Utc::now();
    let store = crate::state::open_existing(&loaded.state_dir)?;
    let store = store.as_deref();
    let facts = reconcile::facts(store, &loaded.desired.settings, now)?;
    let planned = reconcile::plan(&prepared, opts, &facts, store, now).await?;
    let mut publisher = Publisher::new();
    if in_actions {
        publisher = publisher.with(crate::actions::Begin);
    }
    publisher = publisher.with(out);
    if in_actions {
        publisher = publisher.with(crate::actions::ActionsSink { command: "plan" });
    }
    publisher
        .publish(&Published::Plan {
            plan: &planned.plan,
            secrets: &planned.secrets,
        })
        .await?;
    Ok(if detailed_exitcode && planned.plan.pending() > 0 {
        2
    } else {
        0
    })
}

fn incidents(
    dir: &std::path::Path,
    command: Option<&IncidentsCommand>,
    all: bool,
    limit: usize,
    format: HistoryFormat,
    color: bool,
) -> anyhow::Result<u8> {
    let Some(state) = crate::state::open_existing(dir)? else {
        anyhow::bail!(
            "no state database at {}: nothing has been applied with this state directory",
            dir.display()
        );
    };
    let text = match command {
        None => {
            let list = state.incidents(all, limit)?;
            match format {
                HistoryFormat::Human => report::render_incidents(&list, color),
                HistoryFormat::Json => format!("{:#}\n", report::incidents_json(&list)),
            }
        }
        Some(IncidentsCommand::Stats { format }) => {
            let stats = state.remediation_stats()?;
            match format {
                HistoryFormat::Human => report::render_stats(&stats),
                HistoryFormat::Json => format!("{:#}\n", report::stats_json(&stats)),
            }
        }
        Some(IncidentsCommand::Show { id, format }) => {
            let Some(i) = state.incident(*id)? else {
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

fn history(
    dir: &std::path::Path,
    since: Option<&str>,
    limit: usize,
    format: HistoryFormat,
) -> anyhow::Result<u8> {
    let Some(state) = crate::state::open_existing(dir)? else {
        anyhow::bail!(
            "no journal at {}: nothing has been applied with this state directory",
            dir.display()
        );
    };
    let since = since.map(parse_since).transpose()?;
    let entries = state.history(since, limit)?;
    print(&match format {
        HistoryFormat::Human => report::render_history(&entries),
        HistoryFormat::Json => format!("{:#}\n", report::history_json(&entries)),
    })?;
    Ok(0)
}

async fn apply(
    loaded: reconcile::Loaded,
    opts: &Options,
    store: &std::sync::Arc<dyn crate::state::Store>,
    report: Report,
    review: crate::review::GitHubSink,
) -> anyhow::Result<u8> {
    let Report {
        format,
        color,
        in_actions,
    } = report;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
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
    if in_actions {
        publisher = publisher.with(crate::actions::Begin);
    }
    publisher = publisher.with(Stdout {
        layout: Layout::Once(format),
        color,
    });
    if in_actions {
        publisher = publisher.with(crate::actions::ActionsSink { command: "apply" });
    }
    let mut publisher = publisher.with(review);
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
    Ok(if applied.failed() || escalated > 0 {
        1
    } else {
        0
    })
}

/// How `apply` reports.
struct Report {
    format: Format,
    color: bool,
    in_actions: bool,
}

/// Where the source's files are in the repository tend proposes to.
fn local_dir(source: &Source) -> crate::review::SourcePaths {
    match source {
        Source::Dir(d) => crate::review::SourcePaths::Dir(d.display().to_string()),
        Source::Git { path, .. } => crate::review::SourcePaths::Git(path.clone()),
    }
}

fn review_command(dir: &std::path::Path, command: &ReviewCommand) -> anyhow::Result<u8> {
    let Some(state) = crate::state::open_existing(dir)? else {
        anyhow::bail!(
            "no state database at {}: nothing has been applied with this state directory",
            dir.display()
        );
    };
    let text = match command {
        ReviewCommand::List { format } => {
            let rows = state.proposals()?;
            match format {
                HistoryFormat::Human => report::render_proposals(&rows),
                HistoryFormat::Json => format!("{:#}\n", report::proposals_json(&rows)),
            }
        }
        ReviewCommand::Log { limit, format } => {
            let events = state.review_log(*limit)?;
            match format {
                HistoryFormat::Human => report::render_review_log(&events),
                HistoryFormat::Json => format!("{:#}\n", report::review_log_json(&events)),
            }
        }
    };
    print(&text)?;
    Ok(0)
}

/// `tend adopt`: the resource's pending changes, written back as the live
/// values in its declaration.
async fn adopt(
    resource: &str,
    dir: &std::path::Path,
    opts: &Options,
    write: bool,
) -> anyhow::Result<u8> {
    let (kind, name) = resource
        .split_once('/')
        .and_then(|(k, n)| Some((model::Kind::parse(k)?, n)))
        .with_context(|| {
            format!("invalid resource `{resource}`: expected KIND/NAME, such as host.File/motd")
        })?;
    let key = model::ResourceKey::new(kind, name);
    let loaded = reconcile::load(&Source::Dir(dir.to_path_buf()), opts)?;
    let Some(declared) = loaded.desired.resources.iter().find(|r| r.key == key) else {
        anyhow::bail!("{key} is not declared in {}", dir.display());
    };
    let origin = declared.origin.clone();
    let prepared = Prepared::from_load(loaded, Default::default()).await?;
    let loaded = prepared.loaded();
    let now = chrono::Utc::now();
    let store = crate::state::open_existing(&loaded.state_dir)?;
    let facts = reconcile::facts(store.as_deref(), &loaded.desired.settings, now)?;
    let planned = reconcile::plan(&prepared, opts, &facts, store.as_deref(), now).await?;
    let actions: Vec<&crate::vocab::Action> = planned
        .plan
        .actions
        .iter()
        .filter(|a| a.target == key && a.incident.is_none())
        .collect();
    if actions.is_empty() {
        print(&format!(
            "{key} matches its declaration: nothing to adopt.\n"
        ))?;
        return Ok(0);
    }
    crate::review::keep_live_offer(&actions)
        .map_err(|why| anyhow::anyhow!("cannot adopt the live state of {key}: {why}"))?;
    let path = std::path::Path::new(&*origin.file);
    let old = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    let edits: Vec<(String, serde_json::Value)> = actions
        .iter()
        .flat_map(|a| a.changes.iter())
        .map(|c| (c.path.clone(), c.from.clone()))
        .collect();
    let new = model::edit::set_values(&old, origin.line, origin.col, &edits)
        .with_context(|| format!("cannot edit {} in place", path.display()))?;
    print(
        &planned
            .secrets
            .scrub(&report::render_file_diff(&origin.file, &old, &new)),
    )?;
    if write {
        std::fs::write(path, &new)
            .with_context(|| format!("failed to write {}", path.display()))?;
        eprintln!(
            "tend: wrote the live state of {key} into {}",
            path.display()
        );
    }
    Ok(0)
}

/// The `*.rego` files of a directory, as (path relative to it, file).
fn rego_files(dir: &std::path::Path) -> anyhow::Result<Vec<(String, model::SourceFile)>> {
    let snapshot = Source::Dir(dir.to_path_buf())
        .snapshot(dir)
        .with_context(|| format!("failed to read policies from {}", dir.display()))?;
    Ok(snapshot.rego)
}

fn policy_command(command: &PolicyCommand) -> anyhow::Result<u8> {
    use crate::policy::{self, testing};
    let (dir, rest) = match command {
        PolicyCommand::Test { dir, .. } | PolicyCommand::Eval { dir, .. } => (dir, command),
    };
    let repo = match dir {
        Some(d) => rego_files(d)?,
        None => Vec::new(),
    };
    let files = policy::policy_files(&[".".to_string()], &repo);
    let invalid = |diagnostics: Vec<model::Diagnostic>| {
        let mut sources = model::SourceTexts::default();
        for f in &files {
            sources.insert(&f.path, &f.text);
        }
        anyhow::Error::from(PassError::Invalid(model::Invalid {
            diagnostics,
            sources,
        }))
    };
    match rest {
        PolicyCommand::Test { coverage, .. } => {
            // The directory's tests when one is given, else the pack's own.
            let tests: Vec<String> = files
                .iter()
                .filter(|f| {
                    f.is_test() && (dir.is_none() || repo.iter().any(|(_, r)| r.text == f.text))
                })
                .map(|f| f.path.clone())
                .collect();
            let report = testing::run(&files, &tests, *coverage).map_err(invalid)?;
            let out = report::render_policy_tests(&report);
            let (total, failed) = (report.results.len(), report.failed());
            print(&out)?;
            if total == 0 {
                anyhow::bail!("no test_* rules found");
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
        PolicyCommand::Eval { input, .. } => {
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
                    .context("failed to read the input from stdin")?
            } else {
                std::fs::read_to_string(input)
                    .with_context(|| format!("failed to read {}", input.display()))?
            };
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", input.display()))?;
            let policies = policy::Policies::compile(&files).map_err(invalid)?;
            let d = policies.decide(&value);
            print(&format!("{:#}\n", report::policy_decision_json(&d)))?;
            Ok(0)
        }
    }
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(s: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let d = humantime::parse_duration(s).with_context(|| {
        format!("invalid --since `{s}`: expected RFC 3339 or a duration such as 30m, 2h, 7d")
    })?;
    let d = chrono::Duration::from_std(d).context("--since is too far back")?;
    Ok(chrono::Utc::now() - d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_times_and_durations() {
        assert_eq!(
            crate::state::ts(parse_since("2026-11-21T10:00:00Z").unwrap()),
            "2026-11-21T10:00:00.000Z"
        );
        assert!(parse_since("2h").unwrap() < chrono::Utc::now());
        assert!(parse_since("yesterday-ish").is_err());
    }

    /// Regression: causes were printed twice ("x.yaml is not valid UTF-8:
    /// x.yaml is not valid UTF-8").
    #[test]
    fn each_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("failed to read the source: {0}")]
        struct Outer(#[source] std::io::Error);
        let err = anyhow::Error::from(Outer(std::io::Error::other("x.yaml is not valid UTF-8")));
        assert_eq!(
            error_text(&err),
            "failed to read the source: x.yaml is not valid UTF-8"
        );
        let err =
            anyhow::Error::from(std::io::Error::other("disk full")).context("failed to write");
        assert_eq!(error_text(&err), "failed to write: disk full");
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
