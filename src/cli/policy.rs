//! `tend policy`: Rego policies tested (like `opa test`) and evaluated
//! against one input.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::print;
use crate::model;
use crate::policy::{self, testing};
use crate::reconcile::PassError;
use crate::report;
use crate::source::Source;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
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

/// The `*.rego` files of a directory, as (path relative to it, file).
fn rego_files(dir: &Path) -> anyhow::Result<Vec<(String, model::SourceFile)>> {
    let snapshot = Source::Dir(dir.to_path_buf())
        .snapshot(dir)
        .with_context(|| format!("failed to read policies from {}", dir.display()))?;
    Ok(snapshot.rego)
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let command = &args.command;
    let (dir, rest) = match command {
        Command::Test { dir, .. } | Command::Eval { dir, .. } => (dir, command),
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
        Command::Test { coverage, .. } => {
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
        Command::Eval { input, .. } => {
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
