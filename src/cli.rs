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
use crate::state::{self, State};

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
            let planned = reconcile::plan(&mut loaded, &opts, &facts, now).await?;
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
    let mode = opts.mode.unwrap_or(loaded.desired.settings.mode);
    let run_id = state.begin_run(
        "apply",
        &loaded.origin,
        loaded.commit.as_deref(),
        mode.as_str(),
    )?;
    // An earlier run died between calling a provider and recording what
    // happened. Live state is re-read below, so the action is re-planned
    // from facts, never repeated blindly.
    for d in state.dangling_intents()? {
        state.outcome(&state::JournalRecord {
            run_id: d.run_id,
            fingerprint: &d.fingerprint,
            action: &d.action,
            kind: &d.kind,
            name: &d.name,
            commit: d.commit.as_deref(),
            outcome: Some("interrupted"),
            detail: &format!(
                "run {} ended before recording an outcome; live state re-read by run {run_id}",
                d.run_id
            ),
        })?;
    }
    let now = chrono::Utc::now();
    let planned = match reconcile::facts(Some(state), &loaded.desired.settings, now) {
        Ok(facts) => reconcile::plan(loaded, opts, &facts, now).await,
        Err(e) => Err(e),
    };
    let planned = match planned {
        Ok(p) => p,
        Err(e) => {
            state.finish_run(run_id, "error")?;
            return Err(e.into());
        }
    };
    let breaker = loaded.desired.settings.safety.circuit_breaker.failures;
    let results = crate::act::run(
        &planned.plan,
        &loaded.desired,
        &planned.providers,
        state,
        run_id,
        breaker,
    )
    .await?;
    let failed = results.iter().any(|r| r.outcome.label() == "failed");
    state.finish_run(run_id, if failed { "failed" } else { "ok" })?;
    print(&match format {
        Format::Human => {
            let mut text = report::render_plan(&planned.plan, color);
            if !results.is_empty() {
                text.push('\n');
                text.push_str(&report::render_results(&results, color));
            }
            text
        }
        Format::Json => format!("{:#}\n", report::apply_json(&planned.plan, &results)),
        Format::Markdown => report::render_markdown(&planned.plan, Some(&results)),
        Format::Sarif => format!("{:#}\n", report::plan_sarif(&planned.plan)),
    })?;
    Ok(if failed { 1 } else { 0 })
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
        assert!(parse_since("2h").unwrap() < state::now());
        assert!(parse_since("yesterday-ish").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
