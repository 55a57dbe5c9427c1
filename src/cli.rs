//! The command line: parsing, running a command, exit codes.
//!
//! This is the only place errors become text (`tend: <what failed>: <why>`)
//! and exit codes: 0 success or nothing to do, 1 error, 2 changes pending
//! (with `--detailed-exitcode`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::{self, Mode};
use crate::reconcile::{self, Options, PassError};
use crate::report::{self, Format};
use crate::source::Source;
use crate::state::State;

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
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
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
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
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
    /// Test and debug Rego policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run the sample HTTP workload (used by examples/desired-state).
    SampleApp(crate::sample::SampleArgs),
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
    match runtime.block_on(run(cli, color)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if let Some(PassError::Invalid(invalid)) = err.downcast_ref::<PassError>() {
                let color_err =
                    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
                eprint!(
                    "{}",
                    model::diagnostic::render(&invalid.diagnostics, &invalid.sources, color_err)
                );
            }
            eprintln!("tend: {err:#}");
            ExitCode::from(1)
        }
    }
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
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        // A closed pipe (`tend plan | head`) is not an error worth reporting.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("failed to write output"),
    }
}

async fn run(cli: Cli, color: bool) -> anyhow::Result<u8> {
    let opts = |mode: Option<ModeArg>| Options {
        state_dir: cli.state_dir.clone(),
        mode: mode.map(Mode::from),
    };
    match &cli.command {
        Command::Validate { source } => {
            let loaded = reconcile::load(&source.source(), &opts(None))?;
            let commit = loaded
                .commit
                .as_deref()
                .map(|c| format!(" at commit {c}"))
                .unwrap_or_default();
            print(&format!(
                "{} valid: {} document{} in {} file{}{commit}.\n",
                loaded.origin,
                loaded.desired.documents,
                if loaded.desired.documents == 1 {
                    ""
                } else {
                    "s"
                },
                loaded.desired.files,
                if loaded.desired.files == 1 { "" } else { "s" },
            ))?;
            Ok(0)
        }
        Command::Plan {
            source,
            format,
            detailed_exitcode,
        } => {
            let opts = opts(None);
            let mut loaded = reconcile::load(&source.source(), &opts)?;
            let now = chrono::Utc::now();
            let state = State::open_existing(&loaded.state_dir)?;
            let facts = reconcile::facts(state.as_ref(), &loaded.desired.settings, now)?;
            let planned = reconcile::plan(&mut loaded, &opts, &facts, state.as_ref(), now).await?;
            let plan = &planned.plan;
            print(&match format {
                Format::Human => report::render_plan(plan, color),
                Format::Json => format!("{:#}\n", report::plan_json(plan)),
                Format::Markdown => report::render_markdown(plan, None),
                Format::Sarif => format!("{:#}\n", report::plan_sarif(plan)),
            })?;
            Ok(if *detailed_exitcode && plan.pending() > 0 {
                2
            } else {
                0
            })
        }
        Command::Apply {
            source,
            mode,
            format,
        } => {
            let opts = opts(*mode);
            let mut loaded = reconcile::load(&source.source(), &opts)?;
            let mut state = State::open(&loaded.state_dir)?;
            state.lock("tend apply")?;
            let result = apply(&mut loaded, &opts, &state, *format, color).await;
            let unlocked = state.unlock();
            let code = result?;
            unlocked?;
            Ok(code)
        }
        Command::Watch {
            source,
            interval,
            heal_interval,
            jitter,
            max_passes,
            mode,
            format,
        } => {
            if !(0.0..=0.5).contains(jitter) {
                anyhow::bail!("--jitter must be between 0 and 0.5, got {jitter}");
            }
            if interval.is_zero() {
                anyhow::bail!("--interval must be greater than zero");
            }
            let opts = opts(*mode);
            let wo = crate::watch::WatchOptions {
                interval: *interval,
                heal_interval: heal_interval.unwrap_or(*interval),
                jitter: *jitter,
                max_passes: *max_passes,
            };
            let format = *format;
            crate::watch::run(&source.source(), &opts, &wo, |pass| {
                let text = watch_report(pass, format, color);
                if !text.is_empty() {
                    let _ = print(&text);
                }
            })
            .await?;
            Ok(0)
        }
        Command::Incidents {
            command,
            all,
            limit,
            format,
        } => {
            let dir = reconcile::bootstrap_state_dir(&opts(None))?;
            let Some(state) = State::open_existing(&dir)? else {
                anyhow::bail!(
                    "no state database at {}: nothing has been applied with this state directory",
                    dir.display()
                );
            };
            match command {
                None => {
                    let list = state.incidents(*all, *limit)?;
                    print(&match format {
                        HistoryFormat::Human => report::render_incidents(&list, color),
                        HistoryFormat::Json => format!("{:#}\n", report::incidents_json(&list)),
                    })?;
                    Ok(0)
                }
                Some(IncidentsCommand::Stats { format }) => {
                    let stats = state.remediation_stats()?;
                    print(&match format {
                        HistoryFormat::Human => report::render_stats(&stats),
                        HistoryFormat::Json => format!(
                            "{:#}\n",
                            serde_json::json!({"apiVersion": "tend.dev/v1", "kind": "RemediationStats", "formatVersion": report::FORMAT_VERSION, "steps": stats})
                        ),
                    })?;
                    Ok(0)
                }
                Some(IncidentsCommand::Show { id, format }) => {
                    let Some(i) = state.incident(*id)? else {
                        anyhow::bail!("no incident #{id} in {}", dir.display());
                    };
                    print(&match format {
                        HistoryFormat::Human => report::render_incident(&i, color),
                        HistoryFormat::Json => format!("{:#}\n", serde_json::json!(i)),
                    })?;
                    Ok(0)
                }
            }
        }
        Command::History {
            since,
            limit,
            format,
        } => {
            let dir = reconcile::bootstrap_state_dir(&opts(None))?;
            if !dir.join("tend.db").exists() {
                anyhow::bail!(
                    "no journal at {}: nothing has been applied with this state directory",
                    dir.display()
                );
            }
            let state = State::open(&dir)?;
            let since = since.as_deref().map(parse_since).transpose()?;
            let entries = state.history(since.as_deref(), *limit)?;
            print(&match format {
                HistoryFormat::Human => report::render_history(&entries),
                HistoryFormat::Json => format!("{:#}\n", report::history_json(&entries)),
            })?;
            Ok(0)
        }
        Command::Policy { command } => policy_command(command),
        Command::SampleApp(args) => {
            crate::sample::run(args.clone()).await?;
            Ok(0)
        }
    }
}

async fn apply(
    loaded: &mut reconcile::Loaded,
    opts: &Options,
    state: &State,
    format: Format,
    color: bool,
) -> anyhow::Result<u8> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let applied = reconcile::apply(loaded, opts, state, "tend apply", &stop).await?;
    print(&report::render_applied(&applied, format, color))?;
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

/// The `*.rego` files of a directory, as (path relative to it, file).
/// One pass of `tend watch`, as text: quiet when nothing happened.
fn watch_report(pass: crate::watch::PassReport<'_>, format: HistoryFormat, color: bool) -> String {
    use crate::watch::PassReport;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match (pass, format) {
        (PassReport::Failed { error, .. }, HistoryFormat::Json) => format!(
            "{}\n",
            serde_json::json!({"apiVersion": "tend.dev/v1", "kind": "WatchPass", "at": at, "error": format!("{error:#}")})
        ),
        (PassReport::Failed { error, .. }, HistoryFormat::Human) => {
            let mut text = format!("[{at}] pass failed, nothing changed: {error}\n");
            if let PassError::Invalid(inv) = error {
                text.push_str(&model::diagnostic::render(
                    &inv.diagnostics,
                    &inv.sources,
                    color,
                ));
            }
            text
        }
        (PassReport::Done { full, applied }, HistoryFormat::Json) => {
            let mut doc: serde_json::Value =
                serde_json::from_str(&report::render_applied(applied, Format::Json, false))
                    .unwrap_or_default();
            if let Some(m) = doc.as_object_mut() {
                m.insert("kind".into(), "WatchPass".into());
                m.insert("at".into(), at.into());
                m.insert("full".into(), full.into());
            }
            format!("{doc}\n")
        }
        (PassReport::Done { full, applied }, HistoryFormat::Human) => {
            let quiet = applied.plan.actions.is_empty()
                && applied.incidents.iter().all(|i| i.status == "escalated")
                && applied.healed.is_empty()
                && applied.plan.health.iter().all(|a| a.problem.is_none());
            if quiet {
                return String::new();
            }
            format!(
                "[{at}] {} pass\n{}",
                if full { "full" } else { "healing" },
                report::render_applied(applied, Format::Human, color)
            )
        }
    }
}

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
            let mut out = String::new();
            let mut last_file = "";
            for r in &report.results {
                if r.file != last_file {
                    out.push_str(&format!("{}:\n", r.file));
                    last_file = &r.file;
                }
                let verdict = if r.passed { "PASS" } else { "FAIL" };
                out.push_str(&format!(
                    "  {verdict} {} ({:.1} ms)",
                    r.name,
                    r.micros as f64 / 1000.0
                ));
                if let Some(e) = &r.error {
                    out.push_str(&format!(": {e}"));
                }
                out.push('\n');
            }
            for u in &report.uncovered {
                out.push_str(&format!(
                    "not covered: {} lines {}\n",
                    u.file,
                    testing::ranges(&u.lines)
                ));
            }
            let total = report.results.len();
            let failed = report.failed();
            out.push_str(&format!(
                "{}\n{} passed, {} failed\n",
                "-".repeat(40),
                total - failed,
                failed
            ));
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
            let mut policies = policy::Policies::compile(&files).map_err(invalid)?;
            let d = policies.decide(&value);
            let verdict = match d.decision {
                policy::Verdict::Auto => "auto",
                policy::Verdict::Review => "review",
                policy::Verdict::Deny => "deny",
            };
            print(&format!(
                "{:#}\n",
                serde_json::json!({"decision": verdict, "reasons": d.reasons})
            ))?;
            Ok(0)
        }
    }
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(s: &str) -> anyhow::Result<String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    let d = humantime::parse_duration(s).with_context(|| {
        format!("invalid --since `{s}`: expected RFC 3339 or a duration such as 30m, 2h, 7d")
    })?;
    let d = chrono::Duration::from_std(d).context("--since is too far back")?;
    Ok((chrono::Utc::now() - d).to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_times_and_durations() {
        assert_eq!(
            parse_since("2026-11-21T10:00:00Z").unwrap(),
            "2026-11-21T10:00:00.000Z"
        );
        assert!(parse_since("2h").unwrap() < crate::state::now());
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
