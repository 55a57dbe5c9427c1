//! `tend policy test`: runs every `test_*` rule, like `opa test`.

use std::time::Instant;

use regorus::Engine;

use super::engine::{load, PolicyFile};
use super::limits;
use crate::model::diagnostic::Diagnostic;

#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    /// `data.<package>.<rule>`
    pub name: String,
    pub file: String,
    pub passed: bool,
    /// Why it failed, when it did not just evaluate to false.
    pub error: Option<String>,
    pub micros: u128,
}

/// Lines of a policy file that no test reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Uncovered {
    pub file: String,
    pub lines: Vec<u32>,
}

#[derive(Debug, Default)]
pub struct TestReport {
    pub results: Vec<TestResult>,
    pub uncovered: Vec<Uncovered>,
}

impl TestReport {
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed).count()
    }
}

/// The package and the `test_*` rules declared in one file.
fn tests_in(text: &str) -> Option<(String, Vec<String>)> {
    let package = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("package "))?
        .trim()
        .to_string();
    let mut rules: Vec<String> = Vec::new();
    for line in text.lines() {
        if !line.starts_with("test_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !rules.contains(&name) {
            rules.push(name);
        }
    }
    Some((package, rules))
}

/// Runs the tests in `tests_of` (files whose tests run) against all `files`.
pub fn run(
    files: &[PolicyFile],
    tests_of: &[String],
    coverage: bool,
) -> Result<TestReport, Vec<Diagnostic>> {
    let mut engine = Engine::new();
    let sources: Vec<&PolicyFile> = files.iter().collect();
    load(&mut engine, &sources, files)?;
    // Each test rule runs under the limits decisions run under.
    limits::install(&mut engine, false);
    engine.set_enable_coverage(coverage);
    let mut report = TestReport::default();
    for f in files.iter().filter(|f| tests_of.contains(&f.path)) {
        let Some((package, rules)) = tests_in(&f.text) else {
            continue;
        };
        for rule in rules {
            let name = format!("data.{package}.{rule}");
            let started = Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine.eval_rule(name.clone())
            }));
            let micros = started.elapsed().as_micros();
            let (passed, error) = match outcome {
                Ok(Ok(regorus::Value::Bool(true))) => (true, None),
                Ok(Ok(regorus::Value::Undefined)) | Ok(Ok(regorus::Value::Bool(false))) => {
                    (false, None)
                }
                Ok(Ok(other)) => (false, Some(format!("evaluated to {other}, not true"))),
                Ok(Err(e)) => (
                    false,
                    Some(limits::exceeded(&e).unwrap_or_else(|| {
                        e.to_string().lines().next().unwrap_or_default().to_string()
                    })),
                ),
                Err(_) => (false, Some("the evaluator stopped unexpectedly".into())),
            };
            report.results.push(TestResult {
                name,
                file: f.path.clone(),
                passed,
                error,
                micros,
            });
        }
    }
    if coverage {
        if let Ok(cov) = engine.get_coverage_report() {
            for file in cov.files {
                let is_test = files.iter().any(|f| f.path == file.path && f.is_test());
                if !is_test && !file.not_covered.is_empty() {
                    report.uncovered.push(Uncovered {
                        file: file.path,
                        lines: file.not_covered.into_iter().collect(),
                    });
                }
            }
        }
    }
    Ok(report)
}

/// `3, 5-7, 9` from a sorted list of lines.
pub fn ranges(lines: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = lines[i];
        let mut end = start;
        while i + 1 < lines.len() && lines[i + 1] == end + 1 {
            i += 1;
            end = lines[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pack_passes_its_own_tests() {
        let files = super::super::default_pack();
        let tests: Vec<String> = files
            .iter()
            .filter(|f| f.is_test())
            .map(|f| f.path.clone())
            .collect();
        let report = run(&files, &tests, true).unwrap();
        assert!(report.results.len() >= 15, "{report:?}");
        let failed: Vec<_> = report.results.iter().filter(|r| !r.passed).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn a_failing_test_is_reported() {
        let files = vec![PolicyFile {
            path: "t_test.rego".into(),
            text: "package t\n\ntest_ok if true\n\ntest_bad if 1 == 2\n".into(),
        }];
        let report = run(&files, &["t_test.rego".into()], false).unwrap();
        assert_eq!(report.results.len(), 2);
        assert_eq!(report.failed(), 1);
        assert_eq!(report.results[1].name, "data.t.test_bad");
    }

    #[test]
    fn line_ranges() {
        assert_eq!(ranges(&[3, 5, 6, 7, 9]), "3, 5-7, 9");
    }
}
