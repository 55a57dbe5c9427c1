//! Verified changes end to end: the real binary, desired state in a Git
//! repository, the sample workload. A change that makes the workload fail
//! inside its verification window is rolled back and held: not applied
//! again pass after pass, until the declaration changes or a human
//! releases it. Changes to many resources go out in waves.

use std::time::{Duration, Instant};

use super::*;

const TEND: &str = env!("CARGO_BIN_EXE_tend");

/// The desired directory as a Git repository: each call commits what is
/// written, and returns the commit.
fn commit(ws: &Workspace, message: &str) -> String {
    let dir = ws.desired();
    if !dir.join(".git").exists() {
        git(&dir, &["init", "-q", "-b", "main"]);
    }
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-qm", message]);
    git(&dir, &["rev-parse", "HEAD"])
}

/// `tend <cmd> --repo <desired> [args]`.
fn from_git(ws: &Workspace, cmd: &str, args: &[&str]) -> Run {
    let repo = ws.desired();
    let mut c = ws.cmd();
    c.arg(cmd).arg("--repo").arg(&repo).args(args);
    Run::from(c.output().expect("run tend"))
}

fn settings(changes: &str) -> String {
    format!(
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {{name: s}}\nspec:\n  providers: [host]\n  changes: {changes}\n"
    )
}

/// A sample app with an HTTP health check and an availability SLO;
/// `extra` args after its port, `own` lines at the document's top level.
fn app(name: &str, port: u16, extra: &[&str], labels: &str, own: &str) -> String {
    let mut args = vec!["sample-app", "--port"];
    let p = port.to_string();
    args.push(&p);
    args.extend_from_slice(extra);
    let quoted: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "apiVersion: tend.dev/v1\nkind: host.Process\nmetadata: {{name: {name}, labels: {{{labels}}}}}\nspec:\n  command: {TEND}\n  args: [{}]\n  state: running\nhealth:\n  probes:\n    - name: http\n      http: {{url: \"http://127.0.0.1:{port}/healthz\", status: 200, timeout: 1s}}\n  slos:\n    - {{name: availability, signal: http, for: 2s, recovery: 5s}}\n{own}",
        quoted.join(", ")
    )
}

fn args_of(ws: &Workspace, name: &str) -> Vec<String> {
    let pid = ws.pid(name);
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).to_string())
        .collect()
}

/// How many times a process of `name` started failing requests (its log
/// says so at each start).
fn bad_starts(ws: &Workspace, name: &str) -> usize {
    let log = ws.state().join(format!("host/processes/{name}.log"));
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("listening on") && l.contains("failing 1 of requests"))
        .count()
}

/// Once the app answers, a pass finds it healthy and in sync: its spec is
/// known good, and a change to it is verified.
fn known_good(ws: &Workspace, port: u16) {
    wait_http(port);
    from_git(ws, "apply", &[]).ok();
}

#[test]
fn a_change_that_regresses_is_rolled_back_held_and_a_new_commit_goes_out() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write("settings.yaml", &settings("{window: 8s}"));
    ws.write("app.yaml", &app("web", port, &[], "app: web", ""));
    let good = commit(&ws, "the web app");
    from_git(&ws, "apply", &[]).ok();
    known_good(&ws, port);

    // A commit that makes the app fail every request.
    ws.write(
        "app.yaml",
        &app("web", port, &["--error-ratio", "1"], "app: web", ""),
    );
    let bad = commit(&ws, "web: error ratio 1");
    let t0 = Instant::now();
    let run = from_git(&ws, "apply", &["--format", "json"]);
    let took = t0.elapsed();
    run.code(1);
    let j = run.json();
    assert_eq!(j["summary"]["held"], 1, "{j:#}");
    let held = &j["held"][0];
    assert_eq!(held["failedCommit"], bad.as_str(), "{held:#}");
    assert_eq!(held["goodCommit"], good.as_str(), "{held:#}");
    assert_eq!(held["fields"][0], "/spec/args", "{held:#}");
    assert!(run.stderr.contains("held at last good"), "{}", run.stderr);
    // Rolled back: the app runs the good spec again.
    assert!(!args_of(&ws, "web").contains(&"--error-ratio".to_string()));
    let incidents = ws
        .run_raw(&["incidents", "--all", "--format", "json"])
        .json();
    let inc = &incidents["incidents"][0];
    assert_eq!(inc["runbook"], "rollback", "{inc:#}");
    assert_eq!(inc["change"]["commit"], bad.as_str(), "{inc:#}");
    assert_eq!(inc["change"]["fields"][0], "/spec/args", "{inc:#}");
    assert_eq!(inc["status"], "resolved", "{inc:#}");
    assert_eq!(inc["steps"][0]["action"], "reapply-last-good", "{inc:#}");
    assert_eq!(inc["steps"][0]["outcome"], "verified", "{inc:#}");
    let pid = ws.pid("web");

    // Not applied again: ten more full passes.
    for _ in 0..10 {
        let run = from_git(&ws, "apply", &["--format", "json"]);
        run.code(1);
        let j = run.json();
        assert_eq!(j["results"]["applied"], 0, "{j:#}");
        assert_eq!(j["summary"]["held"], 1);
    }
    assert_eq!(ws.pid("web"), pid, "never restarted with the failed spec");
    let runs = bad_starts(&ws, "web");
    assert_eq!(runs, 1, "the failed spec ran once");
    let plan = from_git(&ws, "plan", &[]);
    plan.ok();
    assert!(
        plan.stdout.contains(&format!(
            "held at last good {}: {} failed verification (SLO `availability` is breached)",
            &good[..12],
            &bad[..12]
        )),
        "{}",
        plan.stdout
    );
    let human = ws.run_raw(&["incidents", "show", "1"]);
    assert!(
        human
            .stdout
            .contains(&format!("change:          commit {bad} applied at")),
        "{}",
        human.stdout
    );
    eprintln!(
        "bad write to rollback verified: {:.1} s; the bad spec ran {runs} time(s)",
        took.as_secs_f64()
    );

    // A later commit that changes the spec again is applied and verified.
    ws.write(
        "app.yaml",
        &app("web", port, &["--error-ratio", "0"], "app: web", ""),
    );
    commit(&ws, "web: no errors");
    let run = from_git(&ws, "apply", &["--format", "json"]);
    run.ok();
    assert_eq!(run.json()["results"]["applied"], 1);
    assert!(run.json()["held"].as_array().unwrap().is_empty());
    assert!(args_of(&ws, "web").contains(&"0".to_string()));
    let plan = from_git(&ws, "plan", &["--format", "json"]);
    assert_eq!(plan.json()["summary"]["held"], 0);
    assert_eq!(plan.json()["summary"]["pending"], 0);
}

#[test]
fn freeze_changes_nothing_after_a_regression_and_escalates() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write("settings.yaml", &settings("{window: 8s}"));
    let own = "changes: {onRegression: freeze}\n";
    ws.write("app.yaml", &app("web", port, &[], "app: web", own));
    commit(&ws, "the web app");
    from_git(&ws, "apply", &[]).ok();
    known_good(&ws, port);
    ws.write(
        "app.yaml",
        &app("web", port, &["--error-ratio", "1"], "app: web", own),
    );
    commit(&ws, "web: error ratio 1");
    let run = from_git(&ws, "apply", &["--format", "json"]);
    run.code(1);
    let pid = ws.pid("web");
    assert!(
        args_of(&ws, "web").contains(&"--error-ratio".to_string()),
        "not rolled back"
    );
    let inc = &ws.run_raw(&["incidents", "--format", "json"]).json()["incidents"][0];
    assert_eq!(inc["status"], "escalated", "{inc:#}");
    assert_eq!(inc["runbook"], "freeze", "{inc:#}");
    let steps: Vec<&str> = inc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["escalate"], "{inc:#}");
    assert!(
        inc["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("frozen: Settings spec.changes.onRegression is `freeze`"),
        "{inc:#}"
    );
    for _ in 0..3 {
        let run = from_git(&ws, "apply", &["--format", "json"]);
        run.code(1);
        assert_eq!(run.json()["results"]["applied"], 0);
        assert_eq!(run.json()["held"][0]["frozen"], true);
    }
    assert_eq!(ws.pid("web"), pid, "frozen: nothing changed");
}

#[test]
fn release_applies_the_failed_spec_once_more_and_three_rollbacks_freeze() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write("settings.yaml", &settings("{window: 6s}"));
    ws.write("app.yaml", &app("web", port, &[], "app: web", ""));
    commit(&ws, "the web app");
    from_git(&ws, "apply", &[]).ok();
    known_good(&ws, port);
    ws.write(
        "app.yaml",
        &app("web", port, &["--error-ratio", "1"], "app: web", ""),
    );
    commit(&ws, "web: error ratio 1");
    from_git(&ws, "apply", &[]).code(1);
    let release = ws.run_raw(&["release", "nope"]);
    release.code(1);
    assert!(
        release.stderr.contains("expected KIND/NAME"),
        "{}",
        release.stderr
    );
    for round in 2..=3 {
        let out = ws.run_raw(&["release", "host.Process/web"]);
        out.ok();
        assert!(
            out.stdout.contains("may be applied once more"),
            "{}",
            out.stdout
        );
        let run = from_git(&ws, "apply", &["--format", "json"]);
        run.code(1);
        let j = run.json();
        assert_eq!(
            j["results"]["applied"], 1,
            "round {round}: applied once more"
        );
        assert_eq!(j["summary"]["held"], 1, "round {round}: held again");
        assert!(!args_of(&ws, "web").contains(&"--error-ratio".to_string()));
    }
    // A third rollback was the last: the next regression freezes. This
    // time a merged Approval of the failed spec's fingerprint releases it
    // (once).
    let fingerprint = from_git(&ws, "plan", &["--format", "json"]).json()["held"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    ws.write(
        "approvals/host.Process/web.yaml",
        &format!("apiVersion: tend.dev/v1\nkind: Approval\nmetadata: {{name: release-web}}\nspec:\n  target: {{kind: host.Process, name: web}}\n  fingerprint: {fingerprint}\n  expires: \"{expires}\"\n"),
    );
    commit(&ws, "release web once more");
    let run = from_git(&ws, "apply", &["--format", "json"]);
    run.code(1);
    assert_eq!(run.json()["held"][0]["frozen"], true, "{:#}", run.json());
    let all = ws
        .run_raw(&["incidents", "--all", "--format", "json"])
        .json();
    let last = &all["incidents"][0];
    assert_eq!(last["status"], "escalated", "{last:#}");
    assert!(
        last["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("3 automatic rollbacks of this resource within 1h"),
        "{last:#}"
    );
    assert!(
        args_of(&ws, "web").contains(&"--error-ratio".to_string()),
        "frozen on it"
    );
    assert_eq!(bad_starts(&ws, "web"), 4);
    let history = ws
        .run_raw(&["history", "--format", "json", "--limit", "1000"])
        .json();
    let releases = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "release")
        .count();
    assert_eq!(releases, 3, "each release is journaled");
    // The approval was used: it releases nothing more.
    let run = from_git(&ws, "apply", &["--format", "json"]);
    run.code(1);
    assert_eq!(run.json()["results"]["applied"], 0);
}

fn fleet(ws: &Workspace, ports: &[u16], extra: &[&str]) {
    for (i, port) in ports.iter().enumerate() {
        ws.write(
            &format!("web-{i}.yaml"),
            &app(&format!("web-{i}"), *port, extra, "tier: web", ""),
        );
    }
}

#[test]
fn a_change_to_many_goes_out_in_waves_and_a_regression_stops_the_rollout() {
    let ws = Workspace::new();
    let ports: Vec<u16> = (0..10).map(|_| free_port()).collect();
    ws.write(
        "settings.yaml",
        &settings("\n    window: 3s\n    waves:\n      - selector: {labels: {tier: web}}\n        steps: [{count: 1}, {percent: 50}, {percent: 100}]\n        bake: 2s"),
    );
    fleet(&ws, &ports, &[]);
    commit(&ws, "ten web apps");
    // Creating them is no change to verify: nothing was known good.
    from_git(&ws, "apply", &[]).ok();
    for p in &ports {
        wait_http(*p);
    }
    // Healthy and in sync: each spec is now the last good one.
    from_git(&ws, "apply", &[]).ok();
    let plan = from_git(&ws, "plan", &["--format", "json"]);
    assert_eq!(
        plan.json()["summary"]["pending"],
        0,
        "{:#}\n{}",
        plan.json(),
        ws.run_raw(&["history", "--limit", "200"]).stdout
    );
    let pids: Vec<i32> = (0..10).map(|i| ws.pid(&format!("web-{i}"))).collect();

    // A change that breaks them: only the first wave's one ever runs it.
    fleet(&ws, &ports, &["--error-ratio", "1"]);
    commit(&ws, "every web app: error ratio 1");
    let plan = from_git(&ws, "plan", &[]);
    plan.ok();
    assert!(
        plan.stdout
            .contains("wave 2 of 3: goes out once wave 1 passed verification"),
        "{}",
        plan.stdout
    );
    let run = from_git(&ws, "apply", &["--format", "json"]);
    run.code(1);
    let j = run.json();
    assert_eq!(j["results"]["applied"], 1, "{j:#}");
    assert_eq!(j["held"][0]["target"]["name"], "web-0", "{j:#}");
    for _ in 0..3 {
        let run = from_git(&ws, "apply", &["--format", "json"]);
        run.code(1);
        let j = run.json();
        assert_eq!(j["results"]["applied"], 0, "{j:#}");
        let stopped = j["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                a["reasons"]
                    .to_string()
                    .contains("rollout stopped: wave 1 failed")
            })
            .count();
        assert_eq!(stopped, 9, "{j:#}");
    }
    for (i, pid) in pids.iter().enumerate().skip(1) {
        assert_eq!(ws.pid(&format!("web-{i}")), *pid, "web-{i} never changed");
    }
    assert_eq!(bad_starts(&ws, "web-0"), 1);
    let inc = &ws
        .run_raw(&["incidents", "--all", "--format", "json"])
        .json()["incidents"][0];
    assert_eq!(inc["name"], "web-0");
    assert_eq!(inc["change"]["wave"], 1, "{inc:#}");

    // The same change made harmless: wave by wave, the bake between.
    fleet(&ws, &ports, &["--error-ratio", "0"]);
    commit(&ws, "every web app: no errors");
    let mut waves = Vec::new();
    let t0 = Instant::now();
    while waves.iter().sum::<u64>() < 10 && t0.elapsed() < Duration::from_secs(90) {
        let run = from_git(&ws, "apply", &["--format", "json"]);
        run.ok();
        let n = run.json()["results"]["applied"].as_u64().unwrap();
        if n > 0 {
            waves.push(n);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(waves, [1, 4, 5], "one, half, the rest");
}

#[test]
fn a_change_to_a_resource_without_health_is_applied_as_before() {
    let ws = Workspace::new();
    ws.write("settings.yaml", &settings("{window: 30s}"));
    ws.write("f.yaml", &file_doc("f", "f.txt", "one\n"));
    commit(&ws, "a file");
    from_git(&ws, "apply", &[]).ok();
    ws.write("f.yaml", &file_doc("f", "f.txt", "two\n"));
    commit(&ws, "the file changes");
    let run = from_git(&ws, "apply", &["--format", "json"]);
    run.ok();
    let j = run.json();
    assert_eq!(j["results"]["applied"], 1);
    assert!(j["actions"][0].get("change").is_none(), "{j:#}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("f.txt")).unwrap(),
        "two\n"
    );
}

/// A repository policy sees the change (`input.change`): here, every
/// change to a verified resource needs a human, and the plan says whose
/// commit it is.
#[test]
fn policies_see_the_change_they_decide() {
    let ws = Workspace::new();
    let port = free_port();
    ws.write(
        "settings.yaml",
        "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec:\n  providers: [host]\n  policies: {dirs: [policies]}\n  changes: {window: 8s}\n",
    );
    ws.write(
        "policies/changes.rego",
        "package tend\n\nreview contains msg if {\n\tinput.change.fields[_] == \"/spec/args\"\n\tnot input.change.in_window\n\tmsg := sprintf(\"a change of commit %s needs a human\", [input.change.commit])\n}\n",
    );
    ws.write("app.yaml", &app("web", port, &[], "app: web", ""));
    commit(&ws, "the web app");
    from_git(&ws, "apply", &[]).ok();
    known_good(&ws, port);
    ws.write(
        "app.yaml",
        &app("web", port, &["--latency-ms", "1"], "app: web", ""),
    );
    let sha = commit(&ws, "web: a little latency");
    let plan = from_git(&ws, "plan", &["--format", "json"]);
    plan.ok();
    let a = &plan.json()["actions"][0];
    assert_eq!(a["decision"], "review", "{a:#}");
    assert_eq!(a["change"]["commit"], sha.as_str(), "{a:#}");
    assert_eq!(a["change"]["fields"][0], "/spec/args", "{a:#}");
    assert!(
        a["reasons"]
            .to_string()
            .contains(&format!("a change of commit {sha} needs a human")),
        "{a:#}"
    );
}
