//! The command line: parsing, running a command, exit codes.
//!
//! This is the only place errors become text (`tend: <what failed>: <why>`)
//! and exit codes: 0 success or nothing to do, 1 error, 2 changes pending
//! (with `--detailed-exitcode`). This file holds the parser, the global
//! flags and the argument types commands share; each command has its own
//! file with its arguments (`Args`) and its `run`, which parses nothing
//! further, calls the stage that does the work and prints the result.

mod adopt;
mod apply;
mod fleet;
mod history;
mod incidents;
mod pause;
mod plan;
mod policy;
mod release;
mod review;
mod signatures;
mod validate;
mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::{self, Mode};
use crate::reconcile::{self, Options, PassError};
use crate::report::{Format, WatchFormat};
use crate::source::Source;

/// `tend --version`: the version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TEND_BUILD_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "tend",
    version = VERSION,
    about = "Keeps infrastructure in its declared state and heals known failures.",
    long_about = None
)]
struct Cli {
    /// Where tend keeps its journal, lock, Git cache and host records.
    /// Default: Settings spec.stateDir, else .tend in the working directory.
    #[arg(long, global = true, env = "TEND_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// A PostgreSQL database a fleet of watchers shares
    /// (postgres://USER@HOST:PORT/DATABASE; the password from
    /// TEND_STATE_PASSWORD or a file). Also TEND_STATE_URL, which may carry
    /// the password. Default: Settings spec.state, else the embedded store
    /// in the state directory.
    #[arg(long, global = true, value_name = "URL")]
    state: Option<String>,

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
    Validate(validate::Args),
    /// Show what tend would change, without changing it.
    Plan(plan::Args),
    /// Correct drift as far as the mode allows, and report what was done.
    Apply(apply::Args),
    /// Reconcile and heal in a loop until SIGINT/SIGTERM.
    Watch(watch::Args),
    /// List incidents (unresolved ones unless --all), or show one.
    Incidents(incidents::Args),
    /// Print the journal of intents and outcomes.
    History(history::Args),
    /// A fleet of watchers on one shared state database: `tend fleet
    /// status` shows its members, leases and open incidents per node.
    Fleet(fleet::Args),
    /// Pull requests and issues tend opened for a human: the open
    /// proposals, and the log of every GitHub operation.
    Review(review::Args),
    /// Write a resource's live values into its declaration, in place
    /// (every other line of the file unchanged): the local form of a pull
    /// request's "keep the live value in Git" box. Prints a unified diff.
    Adopt(adopt::Args),
    /// Stop all automatic action now (or on what SELECTOR matches): tend
    /// still plans, reports and notifies, and acts again when the pause
    /// ends (`--for`) or on `tend resume`.
    Pause(pause::PauseArgs),
    /// End a pause.
    Resume(pause::ResumeArgs),
    /// Lift the hold on a resource whose declared spec failed verification:
    /// the next pass applies that spec once more and verifies it again.
    Release(release::Args),
    /// What each signature did or would have done: matches, the steps a
    /// signature in shadow would have run and how often the problem went
    /// away on its own, and the verified fix rate of one that acts.
    Signatures(signatures::Args),
    /// Test and debug Rego policies.
    Policy(policy::Args),
    /// Run the sample HTTP workload (used by examples/desired-state).
    SampleApp(crate::sample::SampleArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell).
    Completions(CompletionsArgs),
    /// Print tend's man page (roff), for `man -l` or a man directory.
    Man,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// The command line's definition, for completions and the man page.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration `{s}`: {e}"))
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
        .with_writer(|| OneLine(Vec::new()))
        .with_target(false)
        .try_init();
}

/// One log event, written to stderr as one line when it is complete: a
/// carriage return or line feed inside it (an error quoting a command's
/// output, a path) is shown as `\r` or `\n`. A log line can then never
/// start with text someone else chose, such as a GitHub Actions workflow
/// command (`::error::…`), which the runner would obey.
struct OneLine(Vec<u8>);

impl std::io::Write for OneLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for OneLine {
    fn drop(&mut self) {
        use std::io::Write;
        let text = String::from_utf8_lossy(&self.0);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        let line = one_line(body);
        let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
    }
}

/// `text` on one line: CR and LF shown escaped.
fn one_line(text: &str) -> String {
    text.replace('\r', "\\r").replace('\n', "\\n")
}

fn print(text: &str) -> anyhow::Result<()> {
    Ok(crate::publish::write_stdout(text)?)
}

/// This member's node name in a fleet: `--node`, else TEND_NODE, else
/// the host name.
fn member_node(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var("TEND_NODE").ok())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(crate::state::hostname)
}

/// What every command gets besides its own arguments: the global flags,
/// resolved.
struct Global {
    state_dir: Option<PathBuf>,
    state_url: Option<(String, crate::state::UrlSource)>,
    node: String,
    color: bool,
    in_actions: bool,
}

impl Global {
    /// The options of a pass, with the mode a command overrides, if any.
    fn options(&self, mode: Option<ModeArg>) -> Options {
        Options {
            state_dir: self.state_dir.clone(),
            state_url: self.state_url.clone(),
            node: self.node.clone(),
            mode: mode.map(Mode::from),
            untrusted: false,
        }
    }

    /// The state directory of a command that reads state only.
    fn state_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(reconcile::bootstrap_state_dir(&self.options(None))?)
    }

    /// The shared state database the flag or environment names (the
    /// commands that read no desired state do not see Settings).
    fn shared(&self) -> anyhow::Result<Option<std::sync::Arc<crate::state::Target>>> {
        Ok(reconcile::shared_state(
            &self.options(None),
            &crate::model::Settings::default(),
        )?)
    }

    /// The store of a command that only reads it; an error saying `what`
    /// is missing when nothing was ever applied there.
    fn existing_store(&self, what: &str) -> anyhow::Result<Box<dyn crate::state::Store>> {
        let dir = self.state_dir()?;
        match crate::state::open_existing(&dir, self.shared()?.as_deref())? {
            Some(store) => Ok(store),
            None => anyhow::bail!(
                "no {what} at {}: nothing has been applied with this state directory",
                dir.display()
            ),
        }
    }
}

async fn run(cli: Cli, color: bool) -> anyhow::Result<u8> {
    use crate::state::UrlSource;
    let state_url = match cli.state {
        Some(url) => Some((url, UrlSource::CommandLine)),
        None => std::env::var("TEND_STATE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .map(|u| (u, UrlSource::Environment)),
    };
    let global = Global {
        state_dir: cli.state_dir,
        state_url,
        node: member_node(None),
        color,
        in_actions: crate::actions::detected(cli.github),
    };
    match cli.command {
        Command::Validate(args) => validate::run(args, &global),
        Command::Plan(args) => plan::run(args, &global).await,
        Command::Apply(args) => apply::run(args, &global).await,
        Command::Watch(args) => watch::run(args, &global).await,
        Command::Incidents(args) => incidents::run(args, &global),
        Command::History(args) => history::run(args, &global),
        Command::Fleet(args) => fleet::run(args, &global),
        Command::Review(args) => review::run(args, &global),
        Command::Adopt(args) => adopt::run(args, &global).await,
        Command::Release(args) => release::run(args, &global),
        Command::Pause(args) => pause::pause(args, &global),
        Command::Resume(args) => pause::resume(args, &global),
        Command::Signatures(args) => signatures::run(args, &global),
        Command::Policy(args) => policy::run(args),
        Command::SampleApp(args) => {
            crate::sample::run(args).await?;
            Ok(0)
        }
        Command::Completions(args) => {
            let mut out = Vec::new();
            clap_complete::generate(args.shell, &mut command(), "tend", &mut out);
            print(&String::from_utf8_lossy(&out))?;
            Ok(0)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(command()).render(&mut out)?;
            print(&String::from_utf8_lossy(&out))?;
            Ok(0)
        }
    }
}

/// Where the source's files are in the repository tend proposes to.
fn local_dir(source: &Source) -> crate::review::SourcePaths {
    match source {
        Source::Dir(d) => crate::review::SourcePaths::Dir(d.display().to_string()),
        Source::Git { path, .. } => crate::review::SourcePaths::Git(path.clone()),
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

    /// Regression (L1): a log line carrying a newline could start a new
    /// line with a workflow command the runner obeys.
    #[test]
    fn l1_a_log_line_stays_one_line() {
        let line = one_line("Action failed. path=/tmp/x\n::error title=Injected::approved\r\n");
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        assert!(line.contains("\\n::error"), "{line}");
    }

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
